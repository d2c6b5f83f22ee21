// Test app: grows its RSS outside the V8 heap (Buffers) by $STEP_MB every
// 50 ms up to $MAX_MB, then holds it.
'use strict';
const step = Number(process.env.STEP_MB || 16) << 20;
const max = Number(process.env.MAX_MB || 256) << 20;
const keep = [];
let total = 0;
const t = setInterval(() => {
  if (total >= max) { clearInterval(t); console.log('holding', total >> 20, 'MB'); setInterval(() => {}, 1000); return; }
  const b = Buffer.alloc(step, 1);
  keep.push(b);
  total += step;
}, 50);

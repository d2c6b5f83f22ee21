// Test app: grows its RSS outside the V8 heap (Buffers) by $STEP_MB every
// 50 ms up to $MAX_MB, then holds it. With $GROW_INSTANCE set, only the
// process whose NODE_APP_INSTANCE it names grows; with $PORT, it answers
// HTTP there (behind the proxy).
'use strict';
if (process.env.PORT) {
  require('http').createServer((req, res) => res.end('ok ' + process.pid + '\n'))
    .listen(Number(process.env.PORT), '127.0.0.1');
}
const step = Number(process.env.STEP_MB || 16) << 20;
const max = Number(process.env.MAX_MB || 256) << 20;
const grows = !process.env.GROW_INSTANCE || process.env.GROW_INSTANCE === process.env.NODE_APP_INSTANCE;
const keep = [];
let total = 0;
const t = setInterval(() => {
  if (!grows || total >= max) { clearInterval(t); console.log('holding', total >> 20, 'MB'); setInterval(() => {}, 1000); return; }
  const b = Buffer.alloc(step, 1);
  keep.push(b);
  total += step;
}, 50);

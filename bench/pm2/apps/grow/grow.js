// An app that leaks: it grows its resident memory by GROW_MB_PER_S (default
// 20) MB a second with Buffers outside the V8 heap, up to GROW_MAX_MB
// (default 1500), and says once when it crosses LIMIT_MB (default 150).
'use strict';

const rate = Number(process.env.GROW_MB_PER_S || 20);
const max = Number(process.env.GROW_MAX_MB || 1500);
const limit = Number(process.env.LIMIT_MB || 150) * 1024 * 1024;
const tickMs = 50;
const chunk = Math.round((rate * 1024 * 1024 * tickMs) / 1000);
const kept = [];
let crossed = false;

console.log(`grow pid ${process.pid}: +${rate} MB/s up to ${max} MB`);
setInterval(() => {
  if (kept.length * chunk < max * 1024 * 1024) kept.push(Buffer.alloc(chunk, 1));
  const rss = process.memoryUsage.rss();
  if (!crossed && rss > limit) {
    crossed = true;
    console.log(`grow pid ${process.pid}: rss ${Math.round(rss / 1048576)} MB crossed the limit at ${Date.now()}`);
  }
}, tickMs);

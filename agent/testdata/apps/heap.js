// Test app: fills the V8 heap with live objects until V8 gives up.
'use strict';
console.log('NODE_OPTIONS=' + process.env.NODE_OPTIONS);
const keep = [];
setInterval(() => {
  for (let i = 0; i < 20000; i++) keep.push({ i, s: 'x'.repeat(64) + i });
}, 1);

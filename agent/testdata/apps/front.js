// Test app for the traffic front: an HTTP server on $PORT that dies at
// once on SIGTERM (the agent must drain it first), answers /slow after
// 100 ms (requests are in flight when a restart begins) and exits 1 at
// start while the file $CRASH_WHEN exists (a broken release).
'use strict';
const fs = require('fs');
const http = require('http');

if (process.env.CRASH_WHEN && fs.existsSync(process.env.CRASH_WHEN)) {
  console.error('broken release');
  process.exit(1);
}
const server = http.createServer((req, res) => {
  if (req.url === '/slow') {
    setTimeout(() => res.end('slow ' + process.pid + '\n'), 100);
    return;
  }
  res.end('ok ' + process.pid + '\n');
});
server.listen(Number(process.env.PORT), '127.0.0.1', () => console.log('listening', process.env.PORT));
process.on('SIGTERM', () => process.exit(0));

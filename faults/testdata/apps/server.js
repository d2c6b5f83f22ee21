// Fault-suite app: an HTTP server on 127.0.0.1:$PORT answering "ok PID".
// APP_MODE=exit1 exits 1 at once; APP_MODE=never-listen runs but never
// listens. LOG_BYTES=N writes a line of N bytes to stdout per request.
'use strict';
const http = require('http');

const mode = process.env.APP_MODE || 'serve';
if (mode === 'exit1') {
  console.error('exiting with 1');
  process.exit(1);
}
if (mode === 'never-listen') {
  console.log('not listening, pid', process.pid);
  setInterval(() => {}, 1 << 30);
} else {
  const logBytes = Number(process.env.LOG_BYTES || 0);
  const line = 'x'.repeat(logBytes);
  let n = 0;
  const server = http.createServer((req, res) => {
    if (logBytes > 0) console.log(++n + ' ' + line);
    res.end('ok ' + process.pid + '\n');
  });
  server.keepAliveTimeout = 65000;
  server.listen(Number(process.env.PORT), '127.0.0.1', () => console.log('listening', process.env.PORT));
  process.on('SIGTERM', () => { server.closeAllConnections(); server.close(() => process.exit(0)); });
}

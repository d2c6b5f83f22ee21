// Test app: an HTTP server on $PORT. It listens only once the file
// $LISTEN_WHEN exists (when set), so a test can hold it in "starting".
// GET /crash exits 1; GET /block blocks the event loop for good.
'use strict';
const fs = require('fs');
const http = require('http');

const server = http.createServer((req, res) => {
  if (req.url === '/crash') {
    res.end('bye\n', () => process.exit(1));
    return;
  }
  if (req.url === '/block') {
    res.end('blocking\n', () => { for (;;) {} });
    return;
  }
  res.end('ok ' + process.pid + '\n');
});

function listen() {
  server.listen(Number(process.env.PORT), '127.0.0.1', () => console.log('listening', process.env.PORT));
}

const gate = process.env.LISTEN_WHEN;
if (gate) {
  const t = setInterval(() => {
    if (fs.existsSync(gate)) { clearInterval(t); listen(); }
  }, 20);
} else {
  listen();
}
process.on('SIGTERM', () => server.close(() => process.exit(0)));

// The app of the instances benchmark: every request burns 1 ms of CPU on
// the event loop (a busy loop on process.hrtime), and on /slow every 20th
// request a process serves burns 50 ms instead. It answers "ok PID", so
// that the harness can tell which process answered. Nothing else: no
// signal handlers, no cluster code, Node's defaults (keepAliveTimeout 5 s).
// It listens on PORT (127.0.0.1); under PM2's cluster mode the cluster
// module shares that port among the workers.
'use strict';
const http = require('http');

const port = Number(process.env.PORT || 3000);

function burn(ms) {
  const end = process.hrtime.bigint() + BigInt(ms) * 1000000n;
  while (process.hrtime.bigint() < end) {
    // busy: the event loop is held, as by a render or a JSON.stringify
  }
}

let slow = 0;
const server = http.createServer((req, res) => {
  let ms = 1;
  if (req.url === '/slow' && ++slow % 20 === 0) {
    ms = 50;
  }
  burn(ms);
  res.end(`ok ${process.pid}\n`);
});
server.listen(port, '127.0.0.1', () =>
  console.log(`burn ${process.env.NODE_APP_INSTANCE || ''} listening on 127.0.0.1:${port}`));

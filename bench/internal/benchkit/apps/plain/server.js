// The plain app of the traffic and upgrade benchmarks: a hello world on PORT
// (127.0.0.1), `GET /` answered at once, `GET /slow` after 20 ms, so that
// some requests are in flight whenever the app (or its supervisor) is
// killed, restarted, reloaded or replaced. Nothing
// else: no signal handlers, Node's defaults (keepAliveTimeout 5 s).
'use strict';
const http = require('http');

const port = Number(process.env.PORT || 3000);

const server = http.createServer((req, res) => {
  if (req.url === '/slow') {
    setTimeout(() => res.end(`slow hello from pid ${process.pid}\n`), 20);
    return;
  }
  res.end(`hello from pid ${process.pid}\n`);
});
server.listen(port, '127.0.0.1', () => console.log(`plain listening on 127.0.0.1:${port}`));

// The web app of the benchmark: `GET /` answers a line, `GET /cpu` burns
// 200 ms of CPU on the event loop (a heavy server-side render), and
// `GET /health.html` serves public/health.html from disk the way
// express.static does (stat, then stream the file), the usual fix of
// "point the load balancer at a static page of the app".
'use strict';
const fs = require('fs');
const http = require('http');
const path = require('path');

const port = Number(process.env.PORT || 3000);
const healthFile = path.join(__dirname, 'public', 'health.html');

function burn(ms) {
  const end = process.hrtime.bigint() + BigInt(ms) * 1000000n;
  let x = 0;
  while (process.hrtime.bigint() < end) x += Math.sqrt(x + 1);
  return x;
}

function serveStatic(req, res) {
  fs.stat(healthFile, (err, st) => {
    if (err) {
      res.statusCode = 404;
      res.end();
      return;
    }
    res.setHeader('Content-Type', 'text/html; charset=utf-8');
    res.setHeader('Content-Length', st.size);
    res.setHeader('Last-Modified', st.mtime.toUTCString());
    fs.createReadStream(healthFile).pipe(res);
  });
}

const server = http.createServer((req, res) => {
  switch (req.url) {
    case '/cpu':
      burn(200);
      res.end('rendered\n');
      return;
    case '/health.html':
      serveStatic(req, res);
      return;
    default:
      res.end(`hello from pid ${process.pid}\n`);
  }
});
server.keepAliveTimeout = 65000;
server.listen(port, '127.0.0.1', () => console.log(`web listening on 127.0.0.1:${port}`));

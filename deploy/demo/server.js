// A small demo web app for trying the agent: `GET /` answers with a greeting,
// `GET /crash` exits with code 1, `GET /leak` grows the heap by about 16 MB.
// It listens on PORT (default 3000) at HOST (default: every address).
'use strict';
const http = require('http');

const port = Number(process.env.PORT || 3000);
const host = process.env.HOST || undefined; // 127.0.0.1 behind the agent's proxy
const leaked = [];

const server = http.createServer((req, res) => {
  switch (req.url) {
    case '/crash':
      res.end('crashing\n', () => process.exit(1));
      return;
    case '/leak':
      for (let i = 0; i < 16 * 1024; i++) leaked.push('x'.repeat(1024) + i);
      res.end(`leaked ${leaked.length} KB\n`);
      return;
    default:
      res.setHeader('Content-Type', 'text/plain');
      res.end(`hello from pid ${process.pid}\n`);
  }
});
server.keepAliveTimeout = 65000; // longer than the ALB's 60 s idle timeout
server.listen(port, host, () => console.log(`demo listening on ${host || ''}:${port}`));

process.on('SIGTERM', () => {
  console.log('SIGTERM: closing');
  server.close(() => process.exit(0));
  setTimeout(() => process.exit(0), 2000).unref();
});

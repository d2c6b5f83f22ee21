// A Node app whose event loop is blocked for good once it listens: the
// kernel accepts its connections, nothing ever answers them, and it holds
// one core at 100 %.
'use strict';
const http = require('http');

const port = Number(process.env.PORT || 13000);
http.createServer((req, res) => res.end('ok\n')).listen(port, '127.0.0.1', () => {
  console.log(`blocked app on 127.0.0.1:${port}, spinning`);
  setImmediate(() => { for (;;) {} });
});

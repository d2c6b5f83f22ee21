// An app that answers its first request, then wedges its event loop for
// good: the kernel still accepts connections, nothing ever answers them.
'use strict';
const http = require('http');

const server = http.createServer((req, res) => {
  res.end('ok\n', () => setImmediate(() => { for (;;) {} }));
});
server.listen(0, '127.0.0.1', () => console.log(server.address().port));

// The worker forked by server.js: it listens on WORKER_PORT and stays alive
// when its parent goes away (it does not exit on 'disconnect').
'use strict';
const http = require('http');

const port = Number(process.env.WORKER_PORT || 3001);
const server = http.createServer((req, res) => res.end(`worker ${process.pid}\n`));
server.on('error', (err) => {
  console.error(`worker: ${err.code}: ${err.message}`);
  process.exit(1);
});
server.listen(port, '127.0.0.1', () => {
  console.log(`worker pid ${process.pid} on 127.0.0.1:${port}`);
  if (process.send) process.send('listening');
});
process.on('disconnect', () => console.log(`worker pid ${process.pid}: parent gone, still serving`));

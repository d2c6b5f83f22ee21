// A web app started with `npm start` that forks a worker (worker.js) which
// listens on a port of its own, the way apps run a metrics endpoint or a
// queue consumer beside the web server. The server listens only once the
// worker has listened or failed, so "the server answers" means the whole
// tree is up. `GET /pid` answers the server's pid. Neither process handles
// signals: they die the default way.
'use strict';
const { fork } = require('child_process');
const http = require('http');
const path = require('path');

const port = Number(process.env.PORT || 3000);

const worker = fork(path.join(__dirname, 'worker.js'));
worker.on('exit', (code, sig) => console.log(`server: worker exited (${sig || code})`));

let started = false;
function listen() {
  if (started) return;
  started = true;
  const server = http.createServer((req, res) => {
    if (req.url === '/pid') {
      res.end(String(process.pid));
      return;
    }
    res.end(`hello from pid ${process.pid}, worker ${worker.pid}\n`);
  });
  server.on('error', (err) => {
    console.error(`server: ${err.code}: ${err.message}`);
    process.exit(1);
  });
  server.listen(port, '127.0.0.1', () => console.log(`server pid ${process.pid} on 127.0.0.1:${port}`));
}
worker.on('message', (m) => { if (m === 'listening') listen(); });
worker.on('exit', listen);

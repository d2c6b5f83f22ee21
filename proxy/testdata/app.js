// A small app for the proxy's tests. It listens on 127.0.0.1:$PORT (0 = any
// free port), prints "listening PORT", and appends "METHOD URL" for every
// request to $SEEN_FILE when that is set.
'use strict';
const http = require('http');
const crypto = require('crypto');
const fs = require('fs');

const seen = process.env.SEEN_FILE;
let streams = [];

const server = http.createServer((req, res) => {
  if (seen) fs.appendFileSync(seen, `${req.method} ${req.url}\n`);
  const url = new URL(req.url, 'http://app');
  switch (url.pathname) {
    case '/':
      res.end(`hello ${process.pid}\n`);
      return;
    case '/headers':
      res.setHeader('content-type', 'application/json');
      res.end(JSON.stringify(req.headers));
      return;
    case '/slow':
      setTimeout(() => res.end(`slow ${process.pid}\n`), Number(url.searchParams.get('ms') || 100));
      return;
    case '/hang':
      // With HANG set the request is never answered; otherwise at once.
      if (process.env.HANG) {
        req.socket.on('close', () => console.log('client gone'));
        console.log('hang');
        return;
      }
      res.end(`answered ${process.pid}\n`);
      return;
    case '/cut':
      // Starts a response, then dies in the middle of it.
      res.writeHead(200, { 'content-length': '1000' });
      res.write('partial');
      setTimeout(() => process.exit(1), 20);
      return;
    case '/crash':
      // Reads the body, then dies without answering.
      req.resume();
      req.on('end', () => process.exit(1));
      return;
    case '/upload': {
      const h = crypto.createHash('sha256');
      let n = 0;
      req.on('data', (d) => { h.update(d); n += d.length; });
      req.on('end', () => res.end(`${n} ${h.digest('hex')}`));
      return;
    }
    case '/sse':
      res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache' });
      res.write('data: one\n\n');
      streams.push(res);
      return;
    case '/sse-next':
      for (const s of streams) { s.write('data: two\n\n'); s.end(); }
      streams = [];
      res.end('ok\n');
      return;
  }
  res.statusCode = 404;
  res.end('not found\n');
});

// WebSocket handshake, then every byte echoed back as it is.
server.on('upgrade', (req, sock, head) => {
  const accept = crypto.createHash('sha1')
    .update(req.headers['sec-websocket-key'] + '258EAFA5-E914-47DA-95CA-C5AB0DC85B11')
    .digest('base64');
  sock.write('HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n' +
    `Sec-WebSocket-Accept: ${accept}\r\n\r\n`);
  if (head.length) sock.write(head);
  sock.pipe(sock);
});

// With LOG_CONNS set, every connection's end is printed, with who closed
// it: the peer (a FIN came first) or this app (its keep-alive timeout).
if (process.env.LOG_CONNS) {
  server.on('connection', (sock) => {
    let peerEnded = false;
    sock.on('end', () => { peerEnded = true; });
    sock.on('close', () => console.log(`connection closed by ${peerEnded ? 'the peer' : 'the app'}`));
  });
}

process.on('SIGTERM', () => process.exit(0));
server.listen(Number(process.env.PORT || 0), '127.0.0.1', () => {
  console.log(`listening ${server.address().port}`);
});

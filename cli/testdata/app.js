// Test app for the upgrade tests: GET / answers with the pid, GET /slow
// after 1.5 s, GET /ws switches protocols (a WebSocket handshake) and then
// echoes every byte.
'use strict';
const crypto = require('crypto');
const http = require('http');

const server = http.createServer((req, res) => {
  res.setHeader('Content-Type', 'text/plain');
  if (req.url === '/slow') {
    setTimeout(() => res.end('ok slow ' + process.pid + '\n'), 1500);
    return;
  }
  res.end('ok ' + process.pid + '\n');
});
server.keepAliveTimeout = 65000;
server.on('upgrade', (req, socket) => {
  const accept = crypto.createHash('sha1')
    .update(req.headers['sec-websocket-key'] + '258EAFA5-E914-47DA-95CA-C5AB0DC85B11').digest('base64');
  socket.write('HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n' +
    'Sec-WebSocket-Accept: ' + accept + '\r\n\r\n');
  socket.pipe(socket);
});
server.listen(Number(process.env.PORT), '127.0.0.1', () => console.log('listening', process.env.PORT));
process.on('SIGTERM', () => process.exit(0));

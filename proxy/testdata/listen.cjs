// node-postgres as a LISTEN client of pgmux, for TestListenNotify: it
// listens on CHANNEL, prints "listening", then "received N <disorder>" once
// WANT notifications came (payloads "<channel>:<n>", n from 0); after that
// it UNLISTENs, prints "unlistened", and when its stdin closes prints
// "extra N", the notifications that came after UNLISTEN.
const { Client } = require('pg');

async function main() {
  const c = new Client({ host: '127.0.0.1', port: +process.env.PGMUX_PORT, user: 'postgres', database: 'postgres' });
  await c.connect();
  const want = +process.env.WANT;
  let n = 0, extra = 0, disorder = '', unlistened = false;
  c.on('notification', async (m) => {
    if (unlistened) { extra++; return; }
    const i = +m.payload.split(':')[1];
    if (i !== n && !disorder) disorder = `got ${i}, want ${n}`;
    n++;
    if (n === want) {
      unlistened = true;
      console.log(`received ${n} ${disorder}`);
      await c.query('UNLISTEN ' + process.env.CHANNEL);
      console.log('unlistened');
    }
  });
  await c.query('LISTEN ' + process.env.CHANNEL);
  console.log('listening');
  process.stdin.resume();
  process.stdin.on('end', async () => {
    await c.query('SELECT 1');
    console.log(`extra ${extra}`);
    await c.end();
  });
}

main().catch((e) => { console.log('error ' + e.message); process.exit(1); });

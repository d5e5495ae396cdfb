import t from 'tap';
import { REDACTED, redactUrl } from '../agent/redact.ts';

t.test('redactUrl hides passwords and bare userinfo in any URL', async (t) => {
  const cases: [string, string][] = [
    ['mqtt://broker:1883', 'mqtt://broker:1883'],
    ['mqtt://sensor:hunter2@broker:1883', 'mqtt://sensor:[redacted]@broker:1883'],
    ['wss://u:p@broker/mqtt?x=1', 'wss://u:[redacted]@broker/mqtt?x=1'],
    ['tcp://user:hunter2@broker', 'tcp://user:[redacted]@broker'],
    ['mqtt://tok3n@broker', 'mqtt://[redacted]@broker'],
    ['mqtt://:only@broker', 'mqtt://:[redacted]@broker'],
    // unencoded delimiters in the password: not parsable, still hidden
    ['mqtt://u:p@ss@broker', 'mqtt://u:[redacted]@broker'],
    ['mqtt://u:a/b?c#d@broker:1883', 'mqtt://u:[redacted]@broker:1883'],
    // no scheme at all
    ['user:hunter2@broker:1883', 'user:[redacted]@broker:1883'],
    ['not a url', 'not a url'],
    ['', ''],
  ];
  for (const [input, want] of cases) t.equal(redactUrl(input), want, input);
});

t.test('redactUrl is idempotent and never shows the password', async (t) => {
  for (const pw of ['hunter2', 'p@ss', 'a/b', 'x?y#z', ':colon']) {
    const url = `mqtts://me:${pw}@broker.local:8883/path`;
    const once = redactUrl(url);
    t.notOk(once.includes(pw), `${pw} hidden`);
    t.ok(once.includes(REDACTED));
    t.equal(redactUrl(once), once, 'redacting twice changes nothing');
  }
});

/** MQTT topic → Kafka topic mapping and the event shape (pure functions, no services). */
import t from 'tap';
import { KAFKA_TOPIC_MAX, kafkaTopicName, MqttEventMapper } from '../agent/ingest/mqtt-topic.ts';
import { isValidTopic } from '../agent/config.ts';

t.test('mapping rules', async (tt) => {
  tt.equal(kafkaTopicName('plant/line1/temp'), 'plant.line1.temp', '/ becomes .');
  tt.equal(kafkaTopicName('a b+c#d$e'), 'a_b_c_d_e', 'characters Kafka refuses become _');
  tt.equal(kafkaTopicName('sensor/ü/🌡'), 'sensor._._', 'one _ per character, emoji included');
  tt.equal(kafkaTopicName('Dev-1_x.y'), 'Dev-1_x.y', 'legal characters kept');
  tt.equal(kafkaTopicName('$SYS/broker'), '_SYS.broker');
  tt.equal(kafkaTopicName('/'), '_', '"." is not a valid Kafka topic');
  tt.equal(kafkaTopicName('//'), '__', '".." is not a valid Kafka topic');
  tt.equal(kafkaTopicName('///'), '...', '"..." is valid');
  tt.equal(kafkaTopicName(''), '_', 'never empty');
  tt.equal(kafkaTopicName('/a/'), '.a.');
});

t.test(
  'long topics are truncated to leave room for the prefix, distinct topics stay distinct',
  async (tt) => {
    const long = 'x/'.repeat(200);
    const a = kafkaTopicName(long + 'a');
    const b = kafkaTopicName(long + 'b');
    tt.equal(a.length, KAFKA_TOPIC_MAX);
    tt.not(a, b, 'hash suffix keeps two long topics apart');
    tt.equal(kafkaTopicName(long + 'a'), a, 'deterministic');
    tt.ok(isValidTopic(a));
    const prefixed = kafkaTopicName(long, 'site42.'.length);
    tt.equal(prefixed.length, KAFKA_TOPIC_MAX - 7);
    tt.ok(isValidTopic('site42.' + prefixed), 'prefix + name is a valid topic');
    tt.equal(kafkaTopicName('a'.repeat(249)), 'a'.repeat(249), 'exactly 249 is kept as is');
    tt.equal(kafkaTopicName('a'.repeat(300), 245), 'aaaa', 'tiny room: plain truncation');
    tt.equal(kafkaTopicName('abc', 400).length, 1, 'never empty even with an absurd prefix');
  },
);

t.test('every mapped name is a valid Kafka topic', async (tt) => {
  const samples = [
    '/',
    '//',
    '...',
    'a/../b',
    '.',
    '..',
    '\u0000',
    'x'.repeat(1000),
    '🌡'.repeat(300),
    '#',
    '+/+',
    ' ',
  ];
  for (const s of samples) {
    for (const p of [0, 10, 200]) {
      const name = kafkaTopicName(s, p);
      tt.ok(
        isValidTopic(name) && name.length <= KAFKA_TOPIC_MAX - p,
        `${JSON.stringify(s.slice(0, 10))} with a ${p}-character prefix → ${name.slice(0, 20)}…`,
      );
    }
  }
});

t.test('events: key and header are the MQTT topic, value the payload bytes', async (tt) => {
  const m = new MqttEventMapper({ kafkaTopic: null, prefixLength: 0 });
  const payload = Buffer.from([0, 1, 2, 255]);
  const e = m.event('dev/ü', payload);
  tt.equal(e.topic, 'dev._');
  tt.same(e.key, Buffer.from('dev/ü', 'utf8'));
  tt.same(e.headers, { 'mqtt-topic': 'dev/ü' });
  tt.equal(e.value, payload, 'same bytes, not re-encoded');
  tt.equal(e.source, 'mqtt');
  const one = new MqttEventMapper({ kafkaTopic: 'all.mqtt', prefixLength: 0 });
  tt.equal(one.event('a/b', 'x').topic, 'all.mqtt', 'KEDGE_MQTT_KAFKA_TOPIC wins');
  tt.same(one.event('a/b', 'x').key, Buffer.from('a/b'));
});

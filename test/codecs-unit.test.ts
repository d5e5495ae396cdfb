/**
 * The compression codecs on their own, no broker: each round-trips its own output (also
 * across several LZ4 blocks and Snappy fragments), and kedge's LZ4 frames are standard
 * frames that liblz4's own tool decodes. The end-to-end codec test is codecs.test.ts.
 */
import t from 'tap';
import { spawnSync } from 'node:child_process';
import { codecFor, kafkaCompression } from '../agent/kafka/codecs.ts';
import { TelemetryGenerator } from '../scripts/bench/telemetry.ts';

t.test(
  'each codec round-trips its own output, also across several LZ4 blocks and Snappy fragments',
  async (tt) => {
    const gen = new TelemetryGenerator({ seed: 7 });
    for (const c of ['gzip', 'snappy', 'lz4', 'zstd'] as const) {
      const codec = codecFor(c);
      for (const n of [1, 50, 2000]) {
        const input = Buffer.from(
          gen
            .take(n)
            .map((e) => e.value)
            .join('\n'),
        );
        const z = await codec.compress(input);
        tt.ok((await codec.decompress(z)).equals(input), `${c}: ${input.length} bytes round-trip`);
        if (n === 2000)
          tt.ok(
            z.length < input.length / 2,
            `${c}: telemetry shrinks (${input.length} → ${z.length} bytes)`,
          );
      }
    }
    tt.equal(kafkaCompression('none'), 0);
    tt.equal(kafkaCompression('lz4'), 3, "kafkajs' LZ4 codec id");
  },
);

t.test('lz4 frames are standard LZ4 frames: the lz4 tool (liblz4) decodes them', async (tt) => {
  const has = spawnSync('sh', ['-c', 'command -v lz4'], { stdio: 'ignore' }).status === 0;
  tt.ok(has, 'the lz4 tool is installed (apt-get install -y lz4; .ci/run does)');
  if (!has) return;
  const gen = new TelemetryGenerator({ seed: 9 });
  const input = Buffer.from(
    gen
      .take(3000)
      .map((e) => e.value)
      .join('\n'),
  ); // ~760 KB: a dozen blocks
  const z = await codecFor('lz4').compress(input);
  const r = spawnSync('lz4', ['-d', '-c'], { input: z, maxBuffer: 1 << 26 });
  tt.equal(r.status, 0, r.stderr?.toString());
  tt.ok(r.stdout.equals(input), "liblz4 decodes kedge's frame to the same bytes");
  // and the other way: a frame liblz4 made, decoded by kedge's codec
  const lz = spawnSync('lz4', ['-c', '-B4', '--no-frame-crc'], { input, maxBuffer: 1 << 26 });
  tt.equal(lz.status, 0);
  tt.ok(
    (await codecFor('lz4').decompress(lz.stdout)).equals(input),
    'kedge decodes a liblz4 frame',
  );
});

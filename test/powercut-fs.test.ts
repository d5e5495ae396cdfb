/**
 * The power-loss test tool itself (test/tools/powercut-fs.py): what survives a cut is
 * exactly what its model says (the tool's header): file data up to the last fsync or
 * fdatasync of that file, and every directory operation; nothing else.
 */
import t from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import { mountPowerCut } from './helpers/powercut.ts';

function writeAt(file: string, data: string, at: number, sync: 'fsync' | 'fdatasync' | null) {
  const fd = fs.openSync(file, fs.existsSync(file) ? 'r+' : 'w+');
  try {
    fs.writeSync(fd, data, at);
    if (sync === 'fsync') fs.fsyncSync(fd);
    if (sync === 'fdatasync') fs.fdatasyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}

t.test('synced data survives a cut, unsynced data does not', async (tt) => {
  const m = await mountPowerCut(tt);
  const f = path.join(m.mnt, 'log');
  writeAt(f, 'AAAA', 0, 'fsync');
  writeAt(f, 'BBBB', 4, 'fdatasync');
  writeAt(f, 'CCCC', 8, null); // appended, never synced
  writeAt(f, 'xx', 0, null); // overwrites synced bytes, never synced
  tt.equal(
    fs.readFileSync(f, 'utf8'),
    'xxAABBBBCCCC',
    'before the cut the program sees every write',
  );
  fs.writeFileSync(path.join(m.mnt, 'never-synced'), 'hello'); // closed, not synced
  await m.cut();
  tt.equal(
    fs.readFileSync(path.join(m.backing, 'log'), 'utf8'),
    'AAAABBBB',
    'the backing folder holds what was synced',
  );
  await m.remount();
  tt.equal(
    fs.readFileSync(f, 'utf8'),
    'AAAABBBB',
    'after the cut: the synced bytes, the old ones where unsynced writes were',
  );
  tt.equal(
    fs.readFileSync(path.join(m.mnt, 'never-synced'), 'utf8'),
    '',
    'a file closed without fsync: its name survived (directory operations are durable), its data did not',
  );
});

t.test('after a cut the old mount fails every operation', async (tt) => {
  const m = await mountPowerCut(tt);
  const f = path.join(m.mnt, 'x');
  const fd = fs.openSync(f, 'w');
  await m.cut();
  tt.throws(
    () => fs.writeSync(fd, 'late'),
    'a write through a descriptor opened before the cut fails',
  );
  tt.throws(() => fs.fsyncSync(fd), 'and so does its fsync');
  try {
    fs.closeSync(fd);
  } catch {
    // closing a descriptor of a dead mount may fail too
  }
});

t.test('truncation follows the data: durable on fsync, undone by a cut otherwise', async (tt) => {
  const m = await mountPowerCut(tt);
  const a = path.join(m.mnt, 'a');
  const b = path.join(m.mnt, 'b');
  writeAt(a, '0123456789'.repeat(1000), 0, 'fsync'); // 10,000 bytes: three pages
  writeAt(b, '0123456789'.repeat(1000), 0, 'fsync');
  let fd = fs.openSync(a, 'r+');
  fs.ftruncateSync(fd, 5000);
  fs.fsyncSync(fd);
  fs.closeSync(fd);
  fd = fs.openSync(b, 'r+');
  fs.ftruncateSync(fd, 100);
  fs.writeSync(fd, 'zz', 9000); // grows again: the gap must read as zeros, not old bytes
  tt.equal(fs.fstatSync(fd).size, 9002, 'the program sees the new size');
  const gap = Buffer.alloc(10);
  fs.readSync(fd, gap, 0, 10, 5000);
  tt.same([...gap], Array(10).fill(0), 'bytes past a truncation read as zeros');
  fs.closeSync(fd);
  await m.cut();
  await m.remount();
  tt.equal(fs.statSync(a).size, 5000, 'a synced truncation survives');
  tt.equal(fs.readFileSync(a, 'utf8'), '0123456789'.repeat(500), 'with the bytes before it');
  tt.equal(fs.statSync(b).size, 10_000, 'an unsynced truncation is undone');
  tt.equal(fs.readFileSync(b, 'utf8'), '0123456789'.repeat(1000), 'with every synced byte back');
});

t.test('renames are durable at once; the renamed file keeps only its synced data', async (tt) => {
  const m = await mountPowerCut(tt);
  const tmp = path.join(m.mnt, 'state.tmp');
  writeAt(tmp, 'v1', 0, 'fsync');
  writeAt(tmp, '+more', 2, null);
  fs.renameSync(tmp, path.join(m.mnt, 'state'));
  fs.mkdirSync(path.join(m.mnt, 'sub'));
  fs.writeFileSync(path.join(m.mnt, 'gone'), 'x');
  fs.unlinkSync(path.join(m.mnt, 'gone'));
  await m.cut();
  await m.remount();
  tt.notOk(fs.existsSync(tmp), 'the old name is gone');
  tt.equal(
    fs.readFileSync(path.join(m.mnt, 'state'), 'utf8'),
    'v1',
    'the new name holds the synced data only',
  );
  tt.ok(fs.statSync(path.join(m.mnt, 'sub')).isDirectory(), 'a new directory survives');
  tt.notOk(fs.existsSync(path.join(m.mnt, 'gone')), 'an unlink survives');
});

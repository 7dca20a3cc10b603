// ONNX Runtime's side of prenorm's peer benchmark (node 20, onnxruntime-node).
//
//   node ort.mjs OUT --threads T [--runs N] [--warmup N] [--outputs]
//
// Reads OUT/cases.json (written by models.py generate) and, for each case,
// runs OUT/<model>/<case>.onnx on the CPU execution provider with
// graphOptimizationLevel 'all', intraOpNumThreads T and interOpNumThreads 1
// (sequential execution), on the input <case>.input.npy. Prints one JSON line
// per case with the median, min and max of N timed runs after the warm-up.
// With --outputs it also writes the logits of the last run as
// <case>.ort.npy (float32) for models.py check.

import { readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import ort from 'onnxruntime-node';

function usage(message) {
  console.error(`ort.mjs: ${message}\nusage: node ort.mjs OUT --threads T [--runs N] [--warmup N] [--outputs]`);
  process.exit(2);
}

function parseArgs(argv) {
  const o = { out: null, threads: 0, runs: 20, warmup: 3, outputs: false };
  for (let i = 0; i < argv.length; ++i) {
    const arg = argv[i];
    if (arg === '--outputs') o.outputs = true;
    else if (['--threads', '--runs', '--warmup'].includes(arg)) {
      const value = Number(argv[++i]);
      if (!Number.isInteger(value) || value < (arg === '--warmup' ? 0 : 1))
        usage(`${arg} takes a positive integer, got '${argv[i]}'`);
      o[arg.slice(2)] = value;
    } else if (arg.startsWith('--')) usage(`unknown option '${arg}'`);
    else if (o.out === null) o.out = arg;
    else usage(`expected one OUT folder, got '${o.out}' and '${arg}'`);
  }
  if (o.out === null) usage('expected the OUT folder');
  if (o.threads < 1) usage('--threads is required');
  return o;
}

// A little-endian C-order .npy (version 1 or 2) of float32 or int64.
function readNpy(file) {
  const bytes = readFileSync(file);
  if (bytes.toString('latin1', 0, 6) !== '\x93NUMPY') throw new Error(`${file}: not a .npy file`);
  const major = bytes[6];
  const headerLength = major === 1 ? bytes.readUInt16LE(8) : bytes.readUInt32LE(8);
  const start = (major === 1 ? 10 : 12) + headerLength;
  const header = bytes.toString('latin1', major === 1 ? 10 : 12, start);
  const descr = /'descr':\s*'([^']+)'/.exec(header)[1];
  if (/'fortran_order':\s*True/.test(header)) throw new Error(`${file}: Fortran order`);
  const shape = /'shape':\s*\(([^)]*)\)/.exec(header)[1].split(',').filter((s) => s.trim()).map(Number);
  const data = bytes.buffer.slice(bytes.byteOffset + start, bytes.byteOffset + bytes.length);
  if (descr === '<f4') return { type: 'float32', shape, data: new Float32Array(data) };
  if (descr === '<i8') return { type: 'int64', shape, data: new BigInt64Array(data) };
  throw new Error(`${file}: dtype ${descr}, expected <f4 or <i8`);
}

// Writes a float32 array as a version 1.0 .npy of the given shape.
function writeNpy(file, values, shape) {
  let header = `{'descr': '<f4', 'fortran_order': False, 'shape': (${shape.join(', ')}${shape.length === 1 ? ',' : ''}), }`;
  header += ' '.repeat(63 - ((10 + header.length) % 64)) + '\n'; // the data starts at a multiple of 64
  const prefix = Buffer.alloc(10);
  prefix.write('\x93NUMPY', 0, 'latin1');
  prefix[6] = 1;
  prefix[7] = 0;
  prefix.writeUInt16LE(header.length, 8);
  const data = Buffer.from(values.buffer, values.byteOffset, values.byteLength);
  writeFileSync(file, Buffer.concat([prefix, Buffer.from(header, 'latin1'), data]));
}

const median = (sorted) => {
  const n = sorted.length;
  return n % 2 ? sorted[(n - 1) / 2] : 0.5 * (sorted[n / 2 - 1] + sorted[n / 2]);
};

const o = parseArgs(process.argv.slice(2));
const cases = JSON.parse(readFileSync(path.join(o.out, 'cases.json'), 'utf8'));
for (const c of cases) {
  const folder = path.join(o.out, c.dir);
  const session = await ort.InferenceSession.create(path.join(folder, c.onnx), {
    executionProviders: ['cpu'],
    graphOptimizationLevel: 'all',
    intraOpNumThreads: o.threads,
    interOpNumThreads: 1,
    executionMode: 'sequential',
  });
  const input = readNpy(path.join(folder, c.input));
  const feeds = { [c.input_name]: new ort.Tensor(input.type, input.data, input.shape) };
  let result;
  for (let i = 0; i < o.warmup; ++i) result = await session.run(feeds);
  const ms = [];
  for (let i = 0; i < o.runs; ++i) {
    const start = process.hrtime.bigint();
    result = await session.run(feeds);
    ms.push(Number(process.hrtime.bigint() - start) / 1e6);
  }
  if (o.outputs) {
    const logits = result.logits;
    writeNpy(path.join(folder, `${c.case}.ort.npy`), logits.data, logits.dims);
  }
  ms.sort((a, b) => a - b);
  console.log(JSON.stringify({ case: c.case, engine: 'ort', threads: o.threads, runs: o.runs,
    median_ms: median(ms), min_ms: ms[0], max_ms: ms[ms.length - 1] }));
  await session.release();
}

// Run a TF.js graph model (model.json + weight shards) on one input tensor with the pure-JS CPU
// backend and write the requested outputs: the reference runtime of tests/test_vision_detectors.py.
//
//   node run_graph_model.js MODEL_JSON IN_DIR OUT_DIR
//
// IN_DIR/input.json: {"shape": [...], "dtype": "float32" | "int32", "outputs": ["node:0", ...]}
// IN_DIR/input.bin:  the input tensor, little-endian, row-major.
// OUT_DIR/outputs.json: [{"name", "shape", "dtype", "file"}, ...]; OUT_DIR/<i>.bin: each output's data.
// Node modules are resolved from NODE_PATH / this folder's node_modules (npm ci).
import fs from 'node:fs';
import path from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import '@tensorflow/tfjs-backend-cpu';
import { loadGraphModel } from '@tensorflow/tfjs-converter';

function fail(msg) {
  process.stderr.write(`run_graph_model: ${msg}\n`);
  process.exit(2);
}

function fileHandler(modelJson) {
  // A local IOHandler: model.json and its shards, read as plain data (nothing in them is executed).
  return {
    load: async () => {
      const model = JSON.parse(fs.readFileSync(modelJson, 'utf8'));
      const dir = path.dirname(modelJson);
      const specs = [];
      const buffers = [];
      for (const group of model.weightsManifest) {
        specs.push(...group.weights);
        for (const shard of group.paths) buffers.push(fs.readFileSync(path.join(dir, shard)));
      }
      const all = Buffer.concat(buffers);
      return {
        modelTopology: model.modelTopology,
        weightSpecs: specs,
        weightData: all.buffer.slice(all.byteOffset, all.byteOffset + all.byteLength),
        format: model.format,
        generatedBy: model.generatedBy,
        convertedBy: model.convertedBy,
        signature: model.signature,
        userDefinedMetadata: model.userDefinedMetadata,
      };
    },
  };
}

async function main() {
  const [modelJson, inDir, outDir] = process.argv.slice(2);
  if (!modelJson || !inDir || !outDir) fail('usage: node run_graph_model.js MODEL_JSON IN_DIR OUT_DIR');
  await tf.setBackend('cpu');
  const spec = JSON.parse(fs.readFileSync(path.join(inDir, 'input.json'), 'utf8'));
  const raw = fs.readFileSync(path.join(inDir, 'input.bin'));
  const Typed = spec.dtype === 'int32' ? Int32Array : Float32Array;
  const data = new Typed(raw.buffer.slice(raw.byteOffset, raw.byteOffset + raw.byteLength));
  const model = await loadGraphModel(fileHandler(modelJson));
  const input = tf.tensor(data, spec.shape, spec.dtype);
  let outs = model.execute(input, spec.outputs);
  if (!Array.isArray(outs)) outs = [outs];
  fs.mkdirSync(outDir, { recursive: true });
  const index = [];
  for (let i = 0; i < outs.length; i++) {
    const values = await outs[i].data();
    const file = `${i}.bin`;
    fs.writeFileSync(path.join(outDir, file), Buffer.from(values.buffer, values.byteOffset, values.byteLength));
    index.push({ name: spec.outputs[i], shape: outs[i].shape, dtype: outs[i].dtype, file });
  }
  fs.writeFileSync(path.join(outDir, 'outputs.json'), JSON.stringify(index));
  process.stdout.write(`${JSON.stringify(index)}\n`);
}

main().catch((e) => fail(e && e.stack ? e.stack : String(e)));

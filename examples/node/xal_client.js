'use strict';
// A client of xal's scoring service (`xal serve`) in plain JavaScript, written from
// protos/xal/v1/scoring.proto alone: the proto is loaded at run time (@grpc/proto-loader), no code
// is generated, and nothing here knows more about the wire than the proto's comments say.
//
//   const xal = require('./xal_client');
//   const client = xal.connect({ target: '127.0.0.1:50051', token: 'the token' });
//   const reply = await client.scoreBatch({ ids, logits, features, cam_weights, roi, parameters });

const fs = require('fs');
const path = require('path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const PROTOS = path.resolve(__dirname, '..', '..', 'protos');

// keepCase: the proto's own field names (cam_weights, not camWeights); longs as strings (int64 ids
// and counts can exceed 2^53); enums by name; unset fields as their defaults; `oneofs` names the
// field a oneof holds (RoiBatch.kind, LoadModelRequest.source).
const definition = protoLoader.loadSync('xal/v1/scoring.proto', {
  includeDirs: [PROTOS], keepCase: true, longs: String, enums: String, defaults: true, oneofs: true,
});
const xal = grpc.loadPackageDefinition(definition).xal.v1;

// ------------------------------------------------------------------------------------- tensors
// Tensor: raw little-endian bytes in C order with an explicit dtype and shape. DataView writes
// little-endian whatever the host's byte order (a Float32Array would use the host's).

function shapeOf(nested) {
  const shape = [];
  for (let level = nested; Array.isArray(level); level = level[0]) shape.push(level.length);
  return shape;
}

function flatten(nested) {
  return Array.isArray(nested) ? nested.flat(Infinity) : [nested];
}

function tensor(nested, dtype, size, write) {
  const shape = shapeOf(nested);
  const values = flatten(nested);
  const expected = shape.reduce((a, b) => a * b, 1);
  if (values.length !== expected) throw new Error(`ragged array: shape ${JSON.stringify(shape)}`);
  const view = new DataView(new ArrayBuffer(values.length * size));
  values.forEach((value, i) => write(view, i * size, value));
  return { dtype, shape, data: Buffer.from(view.buffer) };
}

/** DTYPE_FLOAT32 tensor of a nested array of numbers (logits, features, cam_weights, boxes). */
function float32Tensor(nested) {
  return tensor(nested, 'DTYPE_FLOAT32', 4, (view, offset, v) => view.setFloat32(offset, v, true));
}

/** DTYPE_INT32 tensor (box counts). */
function int32Tensor(nested) {
  return tensor(nested, 'DTYPE_INT32', 4, (view, offset, v) => view.setInt32(offset, v, true));
}

// ------------------------------------------------------------------------------------------ ROIs

/**
 * RoiBatch of dense masks: masks[b][y][x] in {0, 1} (or booleans), one H×W mask per image;
 * known[b] false marks an ROI as unknown. Packed 8 pixels a byte, most significant bit first:
 * pixel (y, x) is bit 7 - x % 8 of byte [y, x >> 3] (NumPy's packbits order).
 */
function maskRoi(masks, known) {
  const height = masks[0].length;
  const width = masks[0][0].length;
  const rowBytes = Math.ceil(width / 8);
  const packed = Buffer.alloc(masks.length * height * rowBytes);
  masks.forEach((mask, b) => mask.forEach((row, y) => row.forEach((pixel, x) => {
    if (pixel) packed[(b * height + y) * rowBytes + (x >> 3)] |= 0x80 >> (x % 8);
  })));
  return {
    height, width,
    masks: {
      packed: { dtype: 'DTYPE_UINT8', shape: [masks.length, height, rowBytes], data: packed },
      known: known || [],
    },
  };
}

/**
 * RoiBatch of boxes in an H×W frame: boxes[b] is a list of [x_min, y_min, x_max, y_max] in pixels,
 * [] for an ROI known to be empty, or null for an unknown one. Every image gets M rows (the most
 * boxes any image has); rows past its count are padding and must stay zeros.
 */
function boxesRoi(boxes, height, width) {
  const slots = Math.max(1, ...boxes.map((list) => (list ? list.length : 0)));
  const padded = boxes.map((list) => Array.from({ length: slots }, (_, m) => (list && m < list.length ? list[m] : [0, 0, 0, 0])));
  const counts = boxes.map((list) => (list ? list.length : -1));
  return { height, width, boxes: { boxes: float32Tensor(padded), counts: int32Tensor(counts) } };
}

// ---------------------------------------------------------------------------------------- client

function readToken(file) {
  return fs.readFileSync(file, 'utf8').trim();
}

/**
 * A Scoring client. `token`: sent as `authorization: Bearer <token>` on every call; `tlsCa`: PEM of
 * the CA that signed the server's certificate (plaintext without it); `deadlineSeconds`: per call.
 */
function connect({ target, token = null, tlsCa = null, deadlineSeconds = 120, maxMessageMb = 64 }) {
  const credentials = tlsCa ? grpc.credentials.createSsl(fs.readFileSync(tlsCa)) : grpc.credentials.createInsecure();
  const limit = maxMessageMb * 1024 * 1024;
  const stub = new xal.Scoring(target, credentials, {
    'grpc.max_send_message_length': limit, 'grpc.max_receive_message_length': limit,
  });
  const metadata = () => {
    const m = new grpc.Metadata();
    if (token) m.add('authorization', `Bearer ${token}`);
    return m;
  };
  const options = () => ({ deadline: new Date(Date.now() + deadlineSeconds * 1000) });

  const unary = (method) => (request) => new Promise((resolve, reject) => {
    stub[method](request, metadata(), options(), (error, reply) => (error ? reject(error) : resolve(reply)));
  });
  const collect = (call) => new Promise((resolve, reject) => {
    const messages = [];
    call.on('data', (message) => messages.push(message));
    call.on('error', reject);
    call.on('end', () => resolve(messages));
  });

  return {
    stub,
    close: () => stub.close(),
    scoreBatch: unary('ScoreBatch'),
    listModels: unary('ListModels'),
    modelMetadata: unary('ModelMetadata'),
    registerPool: unary('RegisterPool'),
    listPools: unary('ListPools'),
    startScoring: unary('StartScoring'),
    cancelJob: unary('CancelJob'),
    listJobs: unary('ListJobs'),
    statistics: unary('Statistics'),

    /** LoadModel of a file the server can read (under its --model-root). */
    loadModel(name, serverPath) {
      return new Promise((resolve, reject) => {
        const call = stub.LoadModel(metadata(), options(), (error, info) => (error ? reject(error) : resolve(info)));
        call.write({ name, path: serverPath });
        call.end();
      });
    },

    /** LoadModel of a local file, streamed in chunks of `chunkBytes` (the first message names it). */
    uploadModel(name, localPath, chunkBytes = 1 << 20) {
      return new Promise((resolve, reject) => {
        const call = stub.LoadModel(metadata(), options(), (error, info) => (error ? reject(error) : resolve(info)));
        const data = fs.readFileSync(localPath);
        for (let offset = 0; offset < data.length; offset += chunkBytes) {
          call.write(offset === 0 ? { name, chunk: data.subarray(0, chunkBytes) }
            : { chunk: data.subarray(offset, offset + chunkBytes) });
        }
        call.end();
      });
    },

    /** Every status of a job until its terminal one (the stream ends there); the last is final. */
    watchJob(jobId) {
      return collect(stub.WatchJob({ job_id: jobId }, metadata()));
    },

    /** The ranking, best first, from all its pages. */
    async getRanking(jobId, pageSize = 1000) {
      const pages = await collect(stub.GetRanking({ job_id: jobId, page_size: pageSize }, metadata(), options()));
      return pages.flatMap((page) => page.items);
    },
  };
}

module.exports = { connect, readToken, float32Tensor, int32Tensor, maskRoi, boxesRoi, grpc, xal };

#!/usr/bin/env node
'use strict';
// The xal scoring service from JavaScript: score inline batches, or run a job over a pool, and
// print the results as JSON (NaN and ±Infinity as the strings "NaN", "Infinity", "-Infinity").
//
//   node example.js score-batch --target 127.0.0.1:50051 --token-file token.txt batches.json
//   node example.js job --target 127.0.0.1:50051 --token-file token.txt \
//       --model m --upload model.onnx --pool p --pool-path pools/p --k 25 --exclude 0,1,2
//
// batches.json: {"batches": [{"ids": [...], "logits": [[...]], "features": [[[[...]]]],
//   "cam_weights": [[...]], "roi": {"masks": [[[0, 1, ...]]], "known": [...]}
//                            or {"height": H, "width": W, "boxes": [[[x0, y0, x1, y1], ...], [], null]},
//   "parameters": {"uncertainty": "UNCERTAINTY_MARGIN", "weight": 0.3, "threshold": 0.4}}]}
// Every number array travels as float32 (DTYPE_FLOAT32), masks bit-packed, box counts as int32.

const fs = require('fs');
const xal = require('./xal_client');

function parse(argv) {
  const [command, ...rest] = argv;
  const options = { positional: [] };
  for (let i = 0; i < rest.length; i += 1) {
    if (rest[i].startsWith('--')) {
      options[rest[i].slice(2)] = rest[i + 1];
      i += 1;
    } else {
      options.positional.push(rest[i]);
    }
  }
  return { command, options };
}

const finite = (key, value) => (typeof value === 'number' && !Number.isFinite(value) ? String(value) : value);
const integer = (text) => (Number.isSafeInteger(Number(text)) ? Number(text) : text); // int64 arrive as strings

function roiMessage(roi) {
  if (roi.masks) return xal.maskRoi(roi.masks, roi.known);
  return xal.boxesRoi(roi.boxes, roi.height, roi.width);
}

async function scoreBatches(client, file) {
  const { batches } = JSON.parse(fs.readFileSync(file, 'utf8'));
  const results = [];
  for (const batch of batches) {
    const reply = await client.scoreBatch({
      ids: batch.ids || [],
      logits: xal.float32Tensor(batch.logits),
      features: xal.float32Tensor(batch.features),
      cam_weights: xal.float32Tensor(batch.cam_weights),
      roi: roiMessage(batch.roi),
      parameters: batch.parameters || {},
    });
    results.push({
      ids: reply.ids.map(integer),
      score: reply.score, uncertainty: reply.uncertainty, dice: reply.dice, soft_dice: reply.soft_dice,
      roi_energy: reply.roi_energy, pointing_hit: reply.pointing_hit, predicted_class: reply.predicted_class,
      invalid: reply.invalid, excluded: reply.excluded, roi_clipped: reply.roi_clipped, n_invalid: reply.n_invalid,
    });
  }
  return { batches: results };
}

async function runJob(client, options) {
  const { model, pool } = options;
  const models = (await client.listModels({})).models.map((m) => m.name);
  if (!models.includes(model)) {
    if (options.upload) await client.uploadModel(model, options.upload);
    else await client.loadModel(model, options['model-path']);
  }
  const pools = (await client.listPools({})).pools.map((p) => p.name);
  if (!pools.includes(pool)) await client.registerPool({ name: pool, path: options['pool-path'] });

  const parameters = {};
  if (options.uncertainty) parameters.uncertainty = `UNCERTAINTY_${options.uncertainty.toUpperCase()}`;
  if (options.fusion) parameters.fusion = `FUSION_${options.fusion.toUpperCase()}`;
  if (options['missing-roi']) parameters.missing_roi = `MISSING_ROI_${options['missing-roi'].toUpperCase()}`;
  if (options.weight !== undefined) parameters.weight = Number(options.weight);
  if (options.threshold !== undefined) parameters.threshold = Number(options.threshold);
  const { job_id: jobId } = await client.startScoring({
    model, pool, parameters, k: Number(options.k),
    exclude_ids: options.exclude ? options.exclude.split(',').map(Number) : [],
    idempotency_key: options['idempotency-key'] || '',
  });
  const statuses = await client.watchJob(jobId); // ends right after the terminal status
  const final = statuses[statuses.length - 1];
  if (final.state !== 'JOB_SUCCEEDED') {
    return { job_id: jobId, state: final.state, error: final.error };
  }
  const ranking = await client.getRanking(jobId);
  return {
    job_id: jobId, state: final.state, items_done: integer(final.items_done), ranked: integer(final.ranked),
    ranking_note: final.ranking_note, n_item_errors: integer(final.n_item_errors), statuses: statuses.length,
    ranking: ranking.map((item) => ({
      rank: integer(item.rank), id: integer(item.id), source_id: item.source_id, score: item.score,
      uncertainty: item.uncertainty, dice: item.dice, soft_dice: item.soft_dice, roi_energy: item.roi_energy,
      pointing_hit: item.pointing_hit, predicted_class: item.predicted_class, probabilities: item.probabilities,
    })),
  };
}

async function main() {
  const { command, options } = parse(process.argv.slice(2));
  if (!['score-batch', 'job'].includes(command) || !options.target) {
    process.stderr.write('usage: node example.js score-batch|job --target HOST:PORT [--token-file F] [--tls-ca F] ...\n');
    return 64;
  }
  const client = xal.connect({
    target: options.target, token: options['token-file'] ? xal.readToken(options['token-file']) : null,
    tlsCa: options['tls-ca'] || null,
  });
  try {
    const result = command === 'score-batch' ? await scoreBatches(client, options.positional[0]) : await runJob(client, options);
    process.stdout.write(`${JSON.stringify(result, finite)}\n`);
    return result.error ? 1 : 0;
  } catch (error) {
    const code = error.code !== undefined ? xal.grpc.status[error.code] : 'CLIENT';
    process.stderr.write(`${JSON.stringify({ error: { code, details: error.details || error.message } })}\n`);
    return 2;
  } finally {
    client.close();
  }
}

main().then((code) => { process.exitCode = code; });

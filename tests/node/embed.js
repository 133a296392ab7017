#!/usr/bin/env node
// A featurizer client generated at run time from the .proto alone (no featurizer code):
//   node embed.js TARGET MODEL IMAGE_FILE...
// prints one JSON object: {model, version, dtype, shape, data} with data as base64 of the raw
// little-endian tensor bytes, or {error: {code, details}} and exit status 1 on an RPC error.
"use strict";

const fs = require("fs");
const path = require("path");
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");

const PROTO = path.resolve(__dirname, "../../protos/featurizer/v1/featurizer.proto");

function main(argv) {
  const [target, model, ...files] = argv;
  if (!target || !model || files.length === 0) {
    console.error("usage: node embed.js TARGET MODEL IMAGE_FILE...");
    process.exit(2);
  }
  const definition = protoLoader.loadSync(PROTO, { keepCase: true, longs: Number, enums: String, defaults: true, oneofs: true });
  const { Featurizer } = grpc.loadPackageDefinition(definition).featurizer.v1;
  const client = new Featurizer(target, grpc.credentials.createInsecure(), {
    "grpc.max_receive_message_length": 256 * 1024 * 1024,
  });
  const request = { model, images: files.map((file) => ({ encoded: fs.readFileSync(file) })) };
  const deadline = new Date(Date.now() + 60_000);
  client.Embed(request, { deadline }, (error, response) => {
    client.close();
    if (error) {
      console.log(JSON.stringify({ error: { code: error.code, details: error.details } }));
      process.exit(1);
    }
    const { embeddings } = response;
    console.log(JSON.stringify({
      model: response.model,
      version: response.version,
      dtype: embeddings.dtype,
      shape: embeddings.shape,
      data: Buffer.from(embeddings.data).toString("base64"),
    }));
  });
}

main(process.argv.slice(2));

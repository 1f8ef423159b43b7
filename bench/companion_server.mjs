// Stock Uppy Companion (pinned in bench/gateway.py) behind express, for bench/gateway.py.
// Configured from the environment against the benchmark's own storage; S3 routes only.
import fs from 'node:fs'
import * as companion from '@uppy/companion'
import express from 'express'

const env = process.env
fs.mkdirSync(env.COMPANION_FILE_PATH, { recursive: true })
const app = express()
const { app: companionApp } = companion.app({
  secret: env.COMPANION_SECRET,
  filePath: env.COMPANION_FILE_PATH,
  server: { host: `127.0.0.1:${env.COMPANION_PORT}`, protocol: 'http' },
  corsOrigins: true,
  uploadUrls: ['http://127.0.0.1/'],
  s3: {
    key: env.COMPANION_S3_KEY,
    secret: env.COMPANION_S3_SECRET,
    bucket: env.COMPANION_S3_BUCKET,
    region: env.COMPANION_S3_REGION,
    endpoint: env.COMPANION_S3_ENDPOINT,
    forcePathStyle: true,
    expires: 900,
  },
})
app.use(companionApp)
app.listen(Number(env.COMPANION_PORT), '127.0.0.1')

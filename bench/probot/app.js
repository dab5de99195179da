// Minimal Probot app for bench/ingest.py: one handler for every event, doing nothing,
// so the benchmark measures Probot's own ingestion path (verify signature, parse, dispatch, answer).
// Started with Probot's CLI: `npx probot run ./app.js` (APP_ID, PRIVATE_KEY, WEBHOOK_SECRET, PORT, HOST in env).
export default (app) => {
  app.onAny(async () => {});
};

// Start fauxqs on loopback only (its CLI binds 0.0.0.0). Usage: node serve.mjs PORT
import { buildApp } from "fauxqs";

const port = Number(process.argv[2] || 0);
const app = buildApp({ host: "127.0.0.1", logger: false });
await app.listen({ port, host: "127.0.0.1" });
const addr = app.server.address();
console.log(`fauxqs listening on 127.0.0.1:${addr.port}`);
for (const sig of ["SIGTERM", "SIGINT"]) {
  process.on(sig, () => app.close().then(() => process.exit(0)));
}

"""The plan-aware OpenAI-compatible gateway and the Redis Streams job queue.

- `config.build_config(plan, ["NAME=URL", ...], ["/v1/embeddings=NAME", ...], limits=..., ...)` → `GatewayConfig`
- `server.Gateway(config)`; `server.serve(gateway, host, port)` (blocking) or `await server.start(gateway, host, port)`
- `queue.JobQueue(redis_url)`: `submit`, `status`, `wait`; `queue.Worker(queue, job_class, backend_url).run()`
- `fake_backend`: a fast OpenAI-shaped test backend (`python -m gpumix.gateway.fake_backend --port P`)
"""

#!/usr/bin/env bash
# `make demo`: plan the hybrid box, then start the CPU demo (chat on SmolLM2 135M Instruct, embeddings on
# Gemma 3 270M), query it through the front port, and stop it; last, write the hybrid box's visual report. Leaves
# nothing running, even when a step fails.
set -euo pipefail
cd "$(dirname "$0")/.."
GPUMIX="${GPUMIX:-.venv/bin/gpumix}"
PY="${PYTHON:-.venv/bin/python}"
PORT="${GPUMIX_DEMO_PORT:-8080}"
REPORT="${GPUMIX_DEMO_REPORT:-gpumix-report-hybrid-box.html}"
RUN_DIR="$(mktemp -d -t gpumix-demo.XXXXXX)"

cleanup() {
  "$GPUMIX" down --run-dir "$RUN_DIR" >/dev/null 2>&1 || true
  rm -rf "$RUN_DIR"
}
trap cleanup EXIT INT TERM

echo "== 1. plan the hybrid box (RTX 4090 + RTX 5060 Ti) =="
"$GPUMIX" plan examples/hybrid-box.yaml

echo
echo "== 2. start the CPU demo: gpumix up examples/cpu-demo.yaml --detach (dashboard at http://127.0.0.1:$PORT/ui) =="
"$GPUMIX" up examples/cpu-demo.yaml --detach --port "$PORT" --run-dir "$RUN_DIR" --health-timeout-s 120

echo
echo "== 3. query it =="
"$GPUMIX" status --run-dir "$RUN_DIR" --json > "$RUN_DIR/status.json"
"$PY" - "$RUN_DIR/status.json" <<'PYEOF'
import json, sys
import httpx

status = json.load(open(sys.argv[1]))
urls = {p["service"]: f"http://127.0.0.1:{p['port']}" for p in status["processes"]}
front = f"http://127.0.0.1:{status['front_port']}" if status.get("front_port") else None
chat_url, embed_url = front or urls["chat"], front or urls["embed"]
print(f"chat via {chat_url}, embeddings via {embed_url}")
chat = httpx.post(f"{chat_url}/v1/chat/completions", timeout=120, json={
    "model": "chat", "max_tokens": 24, "temperature": 0,
    "messages": [{"role": "user", "content": "In one sentence: why pin each service to its own GPU?"}]})
chat.raise_for_status()
body = chat.json()
print("chat completion:", repr(body["choices"][0]["message"]["content"]))
print("  usage:", body["usage"])
emb = httpx.post(f"{embed_url}/v1/embeddings", timeout=120, json={"model": "embed", "input": "mismatched GPUs"})
emb.raise_for_status()
vector = emb.json()["data"][0]["embedding"]
print(f"embedding: {len(vector)} dims, first 4 = {[round(v, 4) for v in vector[:4]]}")
PYEOF

echo
echo "== 4. status and stop =="
"$GPUMIX" status --run-dir "$RUN_DIR" || true
"$GPUMIX" down --run-dir "$RUN_DIR"

echo
echo "== 5. the hybrid box as a picture: gpumix report examples/hybrid-box.yaml -o $REPORT =="
"$GPUMIX" report examples/hybrid-box.yaml -o "$REPORT"
echo "open $(cd "$(dirname "$REPORT")" && pwd)/$(basename "$REPORT") in a browser (one file, works offline)"

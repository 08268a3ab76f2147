"""Several hosts on Ray: cluster commands (thin wrappers over `ray start`) and the host agent actor.

Ray is the control plane only (placement, process lifetime, restart, discovery); requests never pass through
it: the gateway proxies HTTP straight to each engine. Ray is an optional extra (`pip install 'gpumix[ray]'`);
nothing here imports it at module load, so the rest of gpumix works without it.
"""

#!/usr/bin/env bash
# Prints the provider's module graph: one line per top-level module of src/ (and the platform
# crate), with the modules it imports (`crate::x`, `super::x` at the top level, and the
# platform crate). Usage: scripts/module-graph.sh [REPO_DIR] (default: this repository).
set -euo pipefail
cd "${1:-$(dirname "$0")/..}"
python3 - <<'PY'
import os, re, collections
edges = collections.defaultdict(set)
def module_of(path):
    if path.startswith('platform/'):
        return 'platform'
    rel = path[len('src/'):]
    top = rel.split('/')[0].removesuffix('.rs')
    return top
files = []
for root in ('src', 'platform'):
    for d, _, names in os.walk(root):
        files += [os.path.join(d, n) for n in names if n.endswith('.rs')]
tops = {module_of(f) for f in files if f.startswith('src/')} | {'platform'}
for f in sorted(files):
    text = open(f).read()
    # Unit tests are not part of the graph.
    text = text.split('#[cfg(test)]\nmod tests')[0]
    me = module_of(f)
    for m in re.findall(r'crate::([a-z0-9_]+)', text) + re.findall(r'cosmian_pkcs11_(platform)', text):
        if m in tops and m != me:
            edges[me].add(m)
for me in sorted(tops):
    print(f"{me:10} -> {', '.join(sorted(edges[me])) or '(nothing)'}")
PY

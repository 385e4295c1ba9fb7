"""Re-vendor the operators' CRD schemas: ``python deploy/k8s/schemas/vendor.py CRD.yaml...``.

Reads each upstream CustomResourceDefinition file (a checkout of the operator's repository at the
release tag named in README.md) and writes, for every version it serves, only its
``openAPIV3Schema`` as ``<group>_<kind>_<version>.json`` beside this file. The manifests' test
(tests/deploy/test_k8s_manifests.py) validates every custom object against these files.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent


def vendor(crd_file: Path) -> list[Path]:
    crd = yaml.safe_load(crd_file.read_text())
    group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
    written = []
    for version in crd["spec"]["versions"]:
        if not version.get("served", True):
            continue
        out = HERE / f"{group}_{kind}_{version['name']}.json"
        out.write_text(json.dumps(version["schema"]["openAPIV3Schema"], indent=1, sort_keys=True) + "\n")
        written.append(out)
    return written


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        for path in vendor(Path(arg)):
            print(path.name)

"""Where the repository's files are, relative to this file (never an absolute path)."""
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
CRD_PATH = REPO_ROOT / "deploy" / "crds" / "asrmodelrollouts.yaml"
EXAMPLES_DIR = REPO_ROOT / "examples"

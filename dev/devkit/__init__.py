"""The pack's development kit: what the tests, the demo, the scripts and the bench share.

The pack in-process under its one name (host), the real ComfyUI server as a
subprocess with an HTTP client (server), the demo's files (demo_assets),
small models of real architectures (models), the folder dataset, the
headless page (browser), UI workflows to API prompts (workflow, graph)
and the weight spectra the basis is measured on (spectra).
It lives at the repository root, beside the pack's own code, and ComfyUI
never imports it: the pack's __init__.py, nodes/ and qrlora_core/ import
nothing from here (tests/unit/test_identity.py checks both).
"""

"""The pack as ComfyUI loads it: a real server, queried over HTTP."""

import pytest

pytestmark = pytest.mark.server

PACK_NODES = {
    "QRLoRALoader": "Load QR-LoRA",
    "QRLoRAMerge": "Merge ΔR",
    "QRLoRAMixer": "Mix QR-LoRAs",
    "QRLoRAApply": "Apply to Model",
    "QRLoRASave": "Save QR-LoRA",
    "QRLoRAExportLoRA": "Export as LoRA",
    "QRLoRATrainingData": "QR-LoRA Training Data",
    "QRLoRATrain": "Train QR-LoRA",
    "QRLoRASimilarity": "ΔR Similarity",
    "QRLoRAGrid": "Mix Grid",
}


def test_server_lists_the_pack_nodes_with_their_interfaces(client):
    info = client.object_info()
    for node_id, title in PACK_NODES.items():
        assert node_id in info, f"{node_id} missing from /object_info"
        assert info[node_id]["display_name"] == title
    assert info["QRLoRAApply"]["output"] == ["MODEL"]
    assert info["QRLoRALoader"]["output"][0] == "QR_LORA"
    assert "QR_LORA" in str(info["QRLoRAMerge"]["input"]["required"]["qr_lora_1"])
    assert len(info) > 400  # the stock nodes loaded too


def test_pack_loaded_without_import_errors(comfy, client):
    pack_lines = [line for line in comfy.log_tail(0, limit=10**7).splitlines() if "comfyui-qrlora" in line]
    assert pack_lines, "ComfyUI never mentioned the pack while loading custom nodes"
    assert not [line for line in pack_lines if "IMPORT FAILED" in line or "Cannot import" in line]

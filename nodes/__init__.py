"""ComfyUI glue: one module per node family, each node a thin shell over qrlora_core."""

from . import routes, weight_adapter
from .apply import QRLoRAApply
from .blocks import QRLoRABlockWeights
from .hooks import QRLoRAHook
from .loader import QRLoRALoader
from .merge import QRLoRAMerge
from .reference import QRLoRAExportReference
from .save import QRLoRAExportLoRA, QRLoRASave
from .similarity import QRLoRASimilarity
from .train import QRLoRATrain
from .train_data import QRLoRATrainingData
from .train_samples import QRLoRASampleSettings

NODES = [
    QRLoRALoader, QRLoRAMerge, QRLoRAApply, QRLoRASave, QRLoRAExportLoRA, QRLoRATrainingData, QRLoRASampleSettings, QRLoRATrain,
    QRLoRASimilarity, QRLoRAHook, QRLoRABlockWeights, QRLoRAExportReference,
]

routes.register()
weight_adapter.register()  # LoraLoader and friends read QR-LoRA files from here on

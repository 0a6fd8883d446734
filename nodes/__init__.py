"""The node classes, one module per node family; the work they do lives in integration/ and qrlora_core/."""

from .apply import QRLoRAApply
from .blocks import QRLoRABlockWeights
from .grid import QRLoRAGrid
from .hooks import QRLoRAHook
from .loader import QRLoRALoader
from .merge import QRLoRAMerge
from .mixer import QRLoRAMixer
from .reference import QRLoRAExportReference
from .save import QRLoRAExportLoRA, QRLoRASave
from .similarity import QRLoRASimilarity
from .train import QRLoRATrain
from .train_data import QRLoRATrainingData
from .train_samples import QRLoRASampleSettings

NODES = [
    QRLoRALoader, QRLoRAMerge, QRLoRAMixer, QRLoRAApply, QRLoRASave, QRLoRAExportLoRA, QRLoRATrainingData, QRLoRASampleSettings, QRLoRATrain,
    QRLoRASimilarity, QRLoRAHook, QRLoRABlockWeights, QRLoRAExportReference, QRLoRAGrid,
]
DRAWN = {"loader": QRLoRALoader, "merge": QRLoRAMerge, "mixer": QRLoRAMixer, "similarity": QRLoRASimilarity, "train": QRLoRATrain,
         "train_data": QRLoRATrainingData}  # web/<module>.js -> the node it draws

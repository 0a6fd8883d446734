"""ComfyUI glue: one module per node family, each node a thin shell over qrlora_core."""

from . import routes
from .apply import QRLoRAApply
from .loader import QRLoRALoader
from .merge import QRLoRAMerge
from .save import QRLoRAExportLoRA, QRLoRASave
from .similarity import QRLoRASimilarity

NODES = [QRLoRALoader, QRLoRAMerge, QRLoRAApply, QRLoRASave, QRLoRAExportLoRA, QRLoRASimilarity]

routes.register()

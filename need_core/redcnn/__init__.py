"""RED-CNN (Chen et al. 2017): the supervised image-domain baseline, trained on paired low-/normal-dose images.

Public entry points: `RedCNN` / `build_redcnn` (network by profile), `RedCNNTrainer` (MSE on `PairedImages` HU
patches, the need_core.training protocol), `load_model`, and `denoise_images` (batched inference in HU).
"""

from need_core.redcnn.hu_scale import HU_PLAUSIBLE, HU_SCALE_WINDOW, RedCNNInputError, hu_to_net, net_to_hu
from need_core.redcnn.inference import denoise_images
from need_core.redcnn.model import CHECKPOINT_KIND, load_model
from need_core.redcnn.network import PROFILES, RedCNN, RedCNNSettings, build_redcnn
from need_core.redcnn.training import PairedImages, RedCNNTrainer, TrainSettings, method_name

__all__ = [
    "CHECKPOINT_KIND",
    "HU_PLAUSIBLE",
    "HU_SCALE_WINDOW",
    "PROFILES",
    "PairedImages",
    "RedCNN",
    "RedCNNInputError",
    "RedCNNSettings",
    "RedCNNTrainer",
    "TrainSettings",
    "build_redcnn",
    "denoise_images",
    "hu_to_net",
    "load_model",
    "method_name",
    "net_to_hu",
]

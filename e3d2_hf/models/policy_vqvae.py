"""The VQ-VAE that travels with a policy: a policy's actions are pose codes, and only its VQ-VAE turns them into joints.

`E3D2PolicyModel` carries one: `attach_vqvae` (kept outside the module tree, so it is neither in the
policy's weights nor trained with it), `save_pretrained` writes it to `<dir>/<config.vqvae_path>`,
`load_vqvae` loads it back lazily from the folder the policy came from.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from e3d2_hf.utils import E3D2Error, atomic_directory

if TYPE_CHECKING:
    from e3d2_hf.models.modeling_vqvae import E3D2VQVAE


class CarriesVQVAE:
    """Mixin for a `PreTrainedModel` whose config has `codebook_size` and `vqvae_path`; it sets `self._vqvae = None` in `__init__`.

    (No class-level annotation of `_vqvae`: transformers resolves the class's type hints at run time.)
    """

    @property
    def vqvae(self) -> E3D2VQVAE | None:
        """The attached VQ-VAE, or None (see `load_vqvae`)."""
        return self._vqvae

    def attach_vqvae(self, vqvae: E3D2VQVAE) -> None:
        """Make `vqvae` travel with the policy (written to `<dir>/<vqvae_path>` by `save_pretrained`).

        Stored outside the module tree so it is neither in the policy's weights nor trained with it.
        """
        if vqvae.config.codebook_size != self.config.codebook_size:
            raise E3D2Error(f"VQ-VAE has {vqvae.config.codebook_size} codes per half, the policy expects {self.config.codebook_size}")
        self.__dict__["_vqvae"] = vqvae

    def _vqvae_folder(self) -> Path | None:
        source = self.config.name_or_path
        if not source or not self.config.vqvae_path:
            return None
        return Path(source) / self.config.vqvae_path

    def load_vqvae(self) -> E3D2VQVAE:
        """The attached VQ-VAE, else the one saved next to the policy (loaded once, then attached)."""
        if self._vqvae is not None:
            return self._vqvae
        folder = self._vqvae_folder()
        if folder is None:
            raise E3D2Error("policy has no VQ-VAE: attach one with attach_vqvae() or load the policy from a folder that has one")
        if not (folder / "config.json").is_file():
            raise E3D2Error(f"policy at {self.config.name_or_path} has no VQ-VAE (expected {folder})")
        from e3d2_hf.models.modeling_vqvae import E3D2VQVAE
        from e3d2_hf.models.weights import load_pretrained

        vqvae = load_pretrained(E3D2VQVAE, folder).to(self.device).eval()
        self.attach_vqvae(vqvae)
        return vqvae

    def save_pretrained(self, save_directory: str | Path, *args: Any, is_main_process: bool = True, **kwargs: Any) -> None:
        """transformers' save, plus the VQ-VAE into `<save_directory>/<vqvae_path>`.

        The attached VQ-VAE is saved; one that was never loaded is copied from the folder the
        policy came from, so a policy re-saved after fine-tuning still carries its VQ-VAE.
        """
        super().save_pretrained(save_directory, *args, is_main_process=is_main_process, **kwargs)
        if not is_main_process or not self.config.vqvae_path:
            return
        target, source = Path(save_directory) / self.config.vqvae_path, self._vqvae_folder()
        if self._vqvae is not None:
            with atomic_directory(target) as folder:
                self._vqvae.save_pretrained(folder)
        elif source is not None and source.is_dir() and source.resolve() != target.resolve():
            with atomic_directory(target) as folder:
                shutil.copytree(source, folder, dirs_exist_ok=True)


__all__ = ["CarriesVQVAE"]

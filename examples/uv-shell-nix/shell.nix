{
  pkgs ? import <nixpkgs> { },
}:

let
  python = pkgs.python312;
in
pkgs.mkShell {
  packages = [
    pkgs.uv
    python
  ];

  # Shared libraries that PyPI wheels expect from the system:
  # libstdc++.so.6 / libgcc_s.so.1 (numpy, pandas) and libz.so.1.
  LD_LIBRARY_PATH = pkgs.lib.makeLibraryPath [
    pkgs.stdenv.cc.cc.lib
    pkgs.zlib
  ];

  # Build .venv on the Nix Python; never download a uv-managed one.
  UV_PYTHON_DOWNLOADS = "never";
  UV_PYTHON = python.interpreter;

  # Nothing from Nix's Python packages should leak into the venv.
  shellHook = ''
    unset PYTHONPATH
  '';
}

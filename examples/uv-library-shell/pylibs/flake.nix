{
  description = "Shared libraries for PyPI wheels on NixOS (nixkernel's venv_library_shell)";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";

  outputs =
    { self, nixpkgs }:
    let
      # LD_LIBRARY_PATH is a Linux matter (and libGL here is Linux-only).
      systems = [
        "x86_64-linux"
        "aarch64-linux"
      ];
      forAllSystems = f: nixpkgs.lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});
    in
    {
      devShells = forAllSystems (pkgs: {
        pylibs = pkgs.mkShell {
          # Add here whatever your wheels ask for ("cannot open shared object file").
          LD_LIBRARY_PATH = pkgs.lib.makeLibraryPath [
            pkgs.stdenv.cc.cc.lib # libstdc++.so.6, libgcc_s.so.1 (numpy, pandas, ...)
            pkgs.zlib # libz.so.1
            pkgs.libGL # libGL.so.1 (opencv-python, Qt/matplotlib backends)
            pkgs.glib # libglib-2.0.so.0, libgthread-2.0.so.0 (opencv-python)
          ];
        };
      });
    };
}

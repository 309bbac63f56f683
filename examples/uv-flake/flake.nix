{
  description = "nixkernel example: uv project with Python and C libraries from Nix";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";

  outputs =
    { self, nixpkgs }:
    let
      systems = [
        "x86_64-linux"
        "aarch64-linux"
        "x86_64-darwin"
        "aarch64-darwin"
      ];
      forAllSystems = f: nixpkgs.lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});
    in
    {
      devShells = forAllSystems (
        pkgs:
        let
          inherit (pkgs) lib;
          python = pkgs.python312;
        in
        {
          default = pkgs.mkShell {
            packages = [
              pkgs.uv
              python
            ];

            # Shared libraries that PyPI wheels expect from the system:
            # libstdc++.so.6 / libgcc_s.so.1 (numpy, pandas) and libz.so.1.
            LD_LIBRARY_PATH = lib.makeLibraryPath [
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
          };
        }
      );
    };
}

{
  description = "nixkernel example: a Python flake dev shell (plus a docs shell)";

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
      devShells = forAllSystems (pkgs: {
        # Listed by nixkernel as "flake-python (flake)".
        default = pkgs.mkShell {
          packages = [
            (pkgs.python3.withPackages (ps: [
              ps.ipykernel
              ps.numpy
            ]))
          ];

          # Plain attributes become environment variables in the shell,
          # and so in the kernel: os.environ["PROJECT_GREETING"].
          PROJECT_GREETING = "hello from the flake-python dev shell";

          # Runs when the shell is entered; keep it quiet (no echo), since
          # the kernel's environment is captured from it.
          shellHook = ''
            export PROJECT_ROOT="$PWD"
            export PROJECT_DATA="$PWD/data"
          '';
        };

        # Listed by nixkernel as "flake-python (flake: docs)".
        docs = pkgs.mkShell {
          packages = [
            (pkgs.python3.withPackages (ps: [
              ps.ipykernel
              ps.sphinx
            ]))
          ];

          PROJECT_GREETING = "hello from the flake-python docs shell";
        };
      });
    };
}

{
  pkgs ? import <nixpkgs> { },
}:

pkgs.mkShell {
  packages = [
    (pkgs.python3.withPackages (ps: [
      ps.ipykernel
      ps.pandas
    ]))
  ];

  # Plain attributes become environment variables in the shell (and kernel).
  PROJECT_GREETING = "hello from shell.nix";

  # Keep the hook quiet (no echo): the kernel's environment is captured from it.
  shellHook = ''
    export PROJECT_ROOT="$PWD"
  '';
}

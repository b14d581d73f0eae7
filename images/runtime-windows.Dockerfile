# escape=`
# The Windows runtime image: `cellbus serve` for pools with `os: windows`, on Windows
# Server 2022 nodes, with `cellbus-sandbox.exe` beside it: the runtime starts each process
# cell under it, inside a Job Object of the cell's own.
#
# Windows containers cannot run a Linux build stage, and a Rust toolchain inside a
# Windows container needs the Visual Studio build tools (gigabytes), so the binary is
# built on a Windows host first, statically linked against the C runtime (nanoserver has
# no VC++ redistributable), then copied in:
#
#   $env:RUSTFLAGS = "-C target-feature=+crt-static"
#   cargo build --release --locked -p cellbus-runtime --bin cellbus --target x86_64-pc-windows-msvc
#   cargo build --release --locked -p cellbus-sandbox-windows --bin cellbus-sandbox --target x86_64-pc-windows-msvc
#   New-Item -ItemType Directory dist
#   Copy-Item target\x86_64-pc-windows-msvc\release\cellbus.exe, target\x86_64-pc-windows-msvc\release\cellbus-sandbox.exe dist\
#   docker build -f images/runtime-windows.Dockerfile -t cellbus-runtime-windows:dev dist
#
# The build context is that directory holding only the two executables.
#
# .github/workflows/images.yml does exactly this on windows-2022.

FROM mcr.microsoft.com/windows/nanoserver:ltsc2022
COPY cellbus.exe cellbus-sandbox.exe C:/cellbus/
ENV CELLBUS_CACHE_DIR=C:\cellbus\cache
# The unprivileged account of nanoserver images.
USER ContainerUser
# /healthz, /readyz and /metrics (CELLBUS_HTTP_ADDR).
EXPOSE 9090
ENTRYPOINT ["C:\\cellbus\\cellbus.exe"]
CMD ["serve"]

package harness

// The container scenarios: the operator's Postfix, Postern and the compose stack in containers
// built from contrib/postfix/Dockerfile, verbatim, on base images made on this machine (no image
// registry is reachable).
//
//  1. RequireEngine, once per process, runs integration/scripts/container-base.sh: it installs
//     Podman when no Docker engine answers, and makes the base images (localhost/debian:bookworm
//     from debootstrap, localhost/golang:<go>-bookworm with this machine's Go), cached by a stamp.
//     Then it finds the engine: docker where `docker info` answers (a docker CLI without an engine
//     does not count), podman otherwise. Any failure fails the test; only
//     POSTERN_IT_SKIP_CONTAINERS=1 skips it.
//  2. BuildImages builds the postfix and postern targets of contrib/postfix/Dockerfile with the base
//     images as build arguments, and a Vault dev server image from the binary
//     integration/vaultdev/build.sh made (integration/vaultdev/Dockerfile), each once per process;
//     the engine's layer cache makes a build of unchanged sources take seconds.
//  3. Engine.Command runs the engine's CLI with the flags these machines need (below, in one
//     place); StartContainerFront runs the postfix image on the host's network (container.go).

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// SkipContainersEnv, set to 1, skips the container scenarios; nothing else does.
const SkipContainersEnv = "POSTERN_IT_SKIP_CONTAINERS"

// Image tags the harness gives the images it builds.
const (
	PostfixImage  = "localhost/postern-postfix:it"
	PosternImage  = "localhost/postern:it"
	VaultDevImage = "localhost/postern-vaultdev:it"
)

// podmanGlobalFlags go before every podman command on these machines:
//
//	--runtime runc             crun, Podman's default runtime, refuses the machine's hybrid
//	                           cgroup layout; runc works.
//	--cgroup-manager=cgroupfs  there is no systemd to ask for cgroups.
//
// Docker needs none: its daemon has its own configuration.
var podmanGlobalFlags = []string{"--runtime", "runc", "--cgroup-manager=cgroupfs"}

// podmanLimitFlags go on podman run and build: Podman's default ulimits (e.g. nproc 32768) exceed
// the machine's hard limits, and the runtime then fails to start the container.
var podmanLimitFlags = []string{"--ulimit", "nofile=1024:1024", "--ulimit", "nproc=4096:4096"}

// hostNetworkFlags go on run and build with either engine: the host's network, so that every
// address is on the host's loopback (Postern's listeners, the test upstream), nothing is
// published, and builds reach Debian's archive and the Go module proxy as the host does.
var hostNetworkFlags = []string{"--network", "host"}

// Engine is the container engine's command line, docker or podman (the same CLI).
type Engine struct {
	// Name is "docker" or "podman".
	Name string
	// BaseImages are the build arguments naming the base images (DEBIAN_IMAGE=..., GO_IMAGE=...).
	BaseImages []string
	path       string
}

// Command returns the engine's command with the global flags these machines need.
func (e *Engine) Command(ctx context.Context, args ...string) *exec.Cmd {
	var all []string
	if e.Name == "podman" {
		all = append(all, podmanGlobalFlags...)
	}
	return exec.CommandContext(ctx, e.path, append(all, args...)...)
}

// Output runs the engine's command and returns its standard output; the error carries standard
// error.
func (e *Engine) Output(ctx context.Context, args ...string) (string, error) {
	cmd := e.Command(ctx, args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("%s %s: %w\n%s", e.Name, strings.Join(args, " "), err, tail(errb.String()+out.String(), 60))
	}
	return out.String(), nil
}

// RunFlags are the flags of `run` on these machines.
func (e *Engine) RunFlags() []string {
	f := append([]string(nil), hostNetworkFlags...)
	if e.Name == "podman" {
		f = append(f, podmanLimitFlags...)
	}
	return f
}

// BuildFlags are the flags of `build` on these machines. Podman builds in the docker format: the
// OCI image format has no HEALTHCHECK.
func (e *Engine) BuildFlags() []string {
	f := append([]string(nil), hostNetworkFlags...)
	if e.Name == "podman" {
		f = append(f, podmanLimitFlags...)
		f = append(f, "--format", "docker")
	}
	return f
}

// Build builds target of dockerfile (empty: the whole file) in dir as tag, with the base images as
// build arguments.
func (e *Engine) Build(ctx context.Context, dir, dockerfile, target, tag string) error {
	args := append([]string{"build"}, e.BuildFlags()...)
	for _, a := range e.BaseImages {
		args = append(args, "--build-arg", a)
	}
	args = append(args, "-f", dockerfile, "-t", tag)
	if target != "" {
		args = append(args, "--target", target)
	}
	if _, err := e.Output(ctx, append(args, dir)...); err != nil {
		return fmt.Errorf("building %s: %w", tag, err)
	}
	return nil
}

// Health returns a container's health status (starting, healthy, unhealthy). Podman runs health
// checks from systemd timers, and these machines have no systemd: for podman the check is run
// here, once per call, as the timer would.
func (e *Engine) Health(ctx context.Context, container string) (string, error) {
	if e.Name == "podman" {
		// The exit status says unhealthy as well; the status below says which.
		_ = e.Command(ctx, "healthcheck", "run", container).Run()
	}
	out, err := e.Output(ctx, "inspect", "--format", "{{.State.Health.Status}}", container)
	return strings.TrimSpace(out), err
}

// findEngine returns docker when a Docker engine answers, else podman when installed.
func findEngine(ctx context.Context) (*Engine, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	var why []string
	if p, err := exec.LookPath("docker"); err == nil {
		out, err := exec.CommandContext(ctx, p, "info", "--format", "{{.ServerVersion}}").CombinedOutput()
		if err == nil {
			return &Engine{Name: "docker", path: p}, nil
		}
		why = append(why, "docker: no engine answers ("+strings.TrimSpace(lastLine(string(out)))+")")
	}
	if p, err := lookPath("podman"); err == nil {
		return &Engine{Name: "podman", path: p}, nil
	}
	why = append(why, "podman is not installed")
	return nil, fmt.Errorf("no container engine: %s", strings.Join(why, "; "))
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}

// prepareEngine makes the base images (installing Podman when needed) and finds the engine.
var prepareEngine = sync.OnceValues(func() (*Engine, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	root, err := ModuleRoot()
	if err != nil {
		return nil, err
	}
	cmd := exec.CommandContext(ctx, "bash", filepath.Join(root, "integration", "scripts", "container-base.sh"))
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("making the base images (integration/scripts/container-base.sh): %w\n%s", err, tail(errb.String(), 40))
	}
	e, err := findEngine(ctx)
	if err != nil {
		return nil, err
	}
	sc := bufio.NewScanner(&out)
	for sc.Scan() {
		if line := strings.TrimSpace(sc.Text()); strings.Contains(line, "=") {
			e.BaseImages = append(e.BaseImages, line)
		}
	}
	if len(e.BaseImages) == 0 {
		return nil, fmt.Errorf("container-base.sh named no base images")
	}
	return e, nil
})

// RequireEngine returns the container engine with the base images made, or fails t; with
// POSTERN_IT_SKIP_CONTAINERS=1 it skips t instead (t must then have a Skipf method).
func RequireEngine(t T) *Engine {
	t.Helper()
	if os.Getenv(SkipContainersEnv) == "1" {
		if s, ok := t.(interface{ Skipf(string, ...any) }); ok {
			s.Skipf("%s=1: skipping the container scenarios", SkipContainersEnv)
			return nil
		}
	}
	if !requirePrereqs(t, SkipContainersEnv, checkEngine) {
		return nil
	}
	e, err := prepareEngine()
	if err != nil {
		t.Fatalf("the container scenarios need a container engine (set %s=1 to skip them): %v", SkipContainersEnv, err)
	}
	return e
}

// imageBuilds builds each of the harness's images once per process.
var imageBuilds = map[string]func() error{
	PostfixImage:  sync.OnceValue(func() error { return buildContribImage("postfix", PostfixImage) }),
	PosternImage:  sync.OnceValue(func() error { return buildContribImage("postern", PosternImage) }),
	VaultDevImage: sync.OnceValue(buildVaultDevImage),
}

// buildContribImage builds target of contrib/postfix/Dockerfile, verbatim, as tag.
func buildContribImage(target, tag string) error {
	e, err := prepareEngine()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	root, err := ModuleRoot()
	if err != nil {
		return err
	}
	return e.Build(ctx, root, filepath.Join(root, "contrib", "postfix", "Dockerfile"), target, tag)
}

// buildVaultDevImage builds VaultDevImage from the binary integration/vaultdev/build.sh made: the
// Dockerfile's vaultdev target builds the same server from source, which takes minutes more.
func buildVaultDevImage() error {
	e, err := prepareEngine()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	root, err := ModuleRoot()
	if err != nil {
		return err
	}
	bin, err := BuildVaultDev(ctx)
	if err != nil {
		return err
	}
	return e.Build(ctx, filepath.Dir(bin), filepath.Join(root, "integration", "vaultdev", "Dockerfile"), "", VaultDevImage)
}

// BuildImages builds the named images (PostfixImage, PosternImage, VaultDevImage), each once per
// process, or fails t.
func BuildImages(t T, e *Engine, images ...string) {
	t.Helper()
	started := time.Now()
	for _, img := range images {
		build, ok := imageBuilds[img]
		if !ok {
			t.Fatalf("BuildImages: no image %q", img)
		}
		if err := build(); err != nil {
			t.Fatalf("%v", err)
		}
	}
	t.Logf("images %v ready after %s", images, time.Since(started).Round(time.Second))
}

// Compose returns the engine's compose tool for project with the compose files: `docker compose`,
// or Debian's podman-compose with the flags above and integration/scripts/podman-compose-net.sh as
// its podman (it mends podman-compose 1.0.3's network_mode). env is added to the environment,
// for the files' ${VARIABLES}.
func (e *Engine) Compose(ctx context.Context, project string, files []string, env []string, args ...string) (*exec.Cmd, error) {
	var full []string
	var cmd *exec.Cmd
	if e.Name == "docker" {
		full = []string{"compose", "-p", project}
		for _, f := range files {
			full = append(full, "-f", f)
		}
		cmd = exec.CommandContext(ctx, e.path, append(full, args...)...)
	} else {
		pc, err := lookPath("podman-compose")
		if err != nil {
			return nil, fmt.Errorf("podman-compose: %w (integration/scripts/container-base.sh installs it)", err)
		}
		root, err := ModuleRoot()
		if err != nil {
			return nil, err
		}
		full = []string{
			"--podman-path", filepath.Join(root, "integration", "scripts", "podman-compose-net.sh"),
			"--podman-args", strings.Join(podmanGlobalFlags, " "),
			"--podman-run-args", strings.Join(podmanLimitFlags, " "),
			"--podman-build-args", strings.Join(e.BuildFlags(), " "),
			"-p", project,
		}
		for _, f := range files {
			full = append(full, "-f", f)
		}
		cmd = exec.CommandContext(ctx, pc, append(full, args...)...)
		env = append(env, "POSTERN_PODMAN="+e.path)
	}
	cmd.Env = append(os.Environ(), env...)
	return cmd, nil
}

// ComposeContainer returns the ID of the container of a compose project's service (both compose
// tools label their containers alike).
func (e *Engine) ComposeContainer(ctx context.Context, project, service string) (string, error) {
	out, err := e.Output(ctx, "ps", "-a", "-q",
		"--filter", "label=com.docker.compose.project="+project,
		"--filter", "label=com.docker.compose.service="+service)
	if err != nil {
		return "", err
	}
	id := strings.TrimSpace(lastLine(out))
	if id == "" {
		return "", fmt.Errorf("compose project %s has no container for service %s", project, service)
	}
	return id, nil
}

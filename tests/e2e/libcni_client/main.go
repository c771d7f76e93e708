// Command libcni-client drives a CNI network configuration list through
// libcni, the library containerd and CRI-O embed, so that tests see the
// plugins exactly as a runtime does: libcni builds each plugin's stdin
// (name, cniVersion, prevResult, runtimeConfig filtered by capabilities),
// sets CNI_* from a RuntimeConf, caches the ADD result and feeds it back to
// CHECK and DEL.
//
// Usage:
//
//	libcni-client add|check|del --conflist FILE --bin-dir DIR[:DIR] \
//	    --cache-dir DIR --netns PATH --container-id ID [--ifname eth0] \
//	    [--args 'K=V;K2=V2'] [--cap-anycast a,b] [--capability-args JSON]
//
// On success ADD prints the chain's result JSON on stdout; CHECK and DEL
// print nothing. On failure the error is printed on stdout as JSON,
// {"error": <libcni's full message>, "code", "msg", "details"} where the
// last three come from the plugin's *types.Error when libcni surfaced one,
// and the exit status is 1. Usage errors exit 2. Plugin stderr is passed
// through to stderr.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
)

type options struct {
	verb           string
	conflist       string
	binDirs        []string
	cacheDir       string
	netns          string
	containerID    string
	ifname         string
	args           [][2]string
	capabilityArgs map[string]interface{}
	timeout        time.Duration
}

// failure is what the client prints when libcni returns an error.
type failure struct {
	Error   string `json:"error"`
	Code    *uint  `json:"code,omitempty"`
	Msg     string `json:"msg,omitempty"`
	Details string `json:"details,omitempty"`
}

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(argv []string, stdout, stderr io.Writer) int {
	opts, err := parseOptions(argv, stderr)
	if err != nil {
		fmt.Fprintf(stderr, "libcni-client: %v\n", err)
		return 2
	}
	result, err := execute(opts)
	if err != nil {
		printFailure(stdout, err)
		return 1
	}
	if result != nil {
		encoded, err := json.Marshal(result)
		if err != nil {
			printFailure(stdout, fmt.Errorf("encoding the result: %w", err))
			return 1
		}
		fmt.Fprintln(stdout, string(encoded))
	}
	return 0
}

func parseOptions(argv []string, stderr io.Writer) (*options, error) {
	if len(argv) == 0 {
		return nil, errors.New("usage: libcni-client add|check|del [flags]")
	}
	opts := &options{verb: argv[0]}
	switch opts.verb {
	case "add", "check", "del":
	default:
		return nil, fmt.Errorf("unknown verb %q (want add, check or del)", opts.verb)
	}

	flags := flag.NewFlagSet("libcni-client "+opts.verb, flag.ContinueOnError)
	flags.SetOutput(stderr)
	binDir := flags.String("bin-dir", "", "CNI plugin directories, separated by ':'")
	cniArgs := flags.String("args", "", "CNI_ARGS as K=V;K2=V2")
	capAnycast := flags.String("cap-anycast", "", "anycast capability: comma-separated addresses")
	capJSON := flags.String("capability-args", "", "capability args as a JSON object")
	flags.StringVar(&opts.conflist, "conflist", "", "network configuration list file")
	flags.StringVar(&opts.cacheDir, "cache-dir", "", "libcni result cache directory (never the node's /var/lib/cni)")
	flags.StringVar(&opts.netns, "netns", "", "pod network namespace path")
	flags.StringVar(&opts.containerID, "container-id", "", "container ID")
	flags.StringVar(&opts.ifname, "ifname", "eth0", "interface name in the pod")
	flags.DurationVar(&opts.timeout, "timeout", 60*time.Second, "deadline for the whole chain")
	if err := flags.Parse(argv[1:]); err != nil {
		return nil, err
	}
	if flags.NArg() != 0 {
		return nil, fmt.Errorf("unexpected arguments %q", flags.Args())
	}
	for name, value := range map[string]string{"--conflist": opts.conflist, "--bin-dir": *binDir, "--cache-dir": opts.cacheDir, "--container-id": opts.containerID} {
		if value == "" {
			return nil, fmt.Errorf("%s is required", name)
		}
	}
	opts.binDirs = filepath.SplitList(*binDir)

	args, err := parseCNIArgs(*cniArgs)
	if err != nil {
		return nil, err
	}
	opts.args = args

	opts.capabilityArgs = map[string]interface{}{}
	if *capJSON != "" {
		if err := json.Unmarshal([]byte(*capJSON), &opts.capabilityArgs); err != nil {
			return nil, fmt.Errorf("--capability-args: %w", err)
		}
	}
	if *capAnycast != "" {
		opts.capabilityArgs["anycast"] = strings.Split(*capAnycast, ",")
	}
	return opts, nil
}

// parseCNIArgs splits "K=V;K2=V2" into libcni's pairs, in order; libcni joins
// them back into CNI_ARGS the same way.
func parseCNIArgs(text string) ([][2]string, error) {
	var pairs [][2]string
	if text == "" {
		return pairs, nil
	}
	for _, item := range strings.Split(text, ";") {
		key, value, found := strings.Cut(item, "=")
		if !found || key == "" {
			return nil, fmt.Errorf("--args: %q is not K=V", item)
		}
		pairs = append(pairs, [2]string{key, value})
	}
	return pairs, nil
}

func execute(opts *options) (types.Result, error) {
	list, err := libcni.ConfListFromFile(opts.conflist)
	if err != nil {
		return nil, err
	}
	cni := libcni.NewCNIConfigWithCacheDir(opts.binDirs, opts.cacheDir, nil)
	runtime := &libcni.RuntimeConf{
		ContainerID:    opts.containerID,
		NetNS:          opts.netns,
		IfName:         opts.ifname,
		Args:           opts.args,
		CapabilityArgs: opts.capabilityArgs,
	}
	ctx, cancel := context.WithTimeout(context.Background(), opts.timeout)
	defer cancel()

	switch opts.verb {
	case "add":
		return cni.AddNetworkList(ctx, list, runtime)
	case "check":
		return nil, cni.CheckNetworkList(ctx, list, runtime)
	default:
		return nil, cni.DelNetworkList(ctx, list, runtime)
	}
}

func printFailure(stdout io.Writer, err error) {
	report := failure{Error: err.Error()}
	// AddNetworkList and DelNetworkList wrap the plugin's error with %w;
	// CheckNetworkList returns it as is. errors.As finds it either way.
	var pluginError *types.Error
	if errors.As(err, &pluginError) {
		code := pluginError.Code
		report.Code = &code
		report.Msg = pluginError.Msg
		report.Details = pluginError.Details
	}
	encoded, _ := json.Marshal(report)
	fmt.Fprintln(stdout, string(encoded))
}

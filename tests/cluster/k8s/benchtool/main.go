// Command benchtool drives the API server for the scale benchmark (scripts/bench-scale): it seeds a
// cluster of a given shape, measures the raw-write floor (the writes the controller needs, issued
// as fast as a plain client-go client can), and creates namespaces at a steady rate. Built by
// ../../build.sh next to kube-apiserver. Every subcommand prints one JSON object on stdout.
//
//	benchtool seed --prefix bench- --namespaces 300 --service-accounts 3 --secrets 500
//	benchtool floor --prefix floor- --count 100 --workers 32
//	benchtool create-namespaces --prefix late- --count 200 --rate 50
//
// The kubeconfig comes from --kubeconfig or $KUBECONFIG.
package main

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
)

func usage() {
	fmt.Fprintln(os.Stderr, `usage: benchtool <seed|floor|create-namespaces> [flags]   (benchtool <cmd> -h for flags)`)
	os.Exit(2)
}

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	cmd, args := os.Args[1], os.Args[2:]
	var err error
	switch cmd {
	case "seed":
		err = seed(args)
	case "floor":
		err = floor(args)
	case "create-namespaces":
		err = createNamespaces(args)
	default:
		usage()
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "benchtool %s: %v\n", cmd, err)
		os.Exit(1)
	}
}

// client builds a clientset with no client-side throttling worth the name and the given user agent
// (the benchmark tells the tool's requests apart in the audit log by it).
func client(kubeconfig, userAgent string) (*kubernetes.Clientset, error) {
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	if kubeconfig != "" {
		rules.ExplicitPath = kubeconfig
	}
	cfg, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &clientcmd.ConfigOverrides{}).ClientConfig()
	if err != nil {
		return nil, err
	}
	cfg.QPS = 10000
	cfg.Burst = 20000
	cfg.UserAgent = userAgent
	cfg.Timeout = 60 * time.Second
	return kubernetes.NewForConfig(cfg)
}

func emit(v any) error {
	enc := json.NewEncoder(os.Stdout)
	return enc.Encode(v)
}

func names(prefix string, start, count int) []string {
	out := make([]string, count)
	for i := range out {
		out[i] = fmt.Sprintf("%s%05d", prefix, start+i)
	}
	return out
}

// parallel runs fn(i) for i in [0, n) on `workers` goroutines and returns the first error.
func parallel(n, workers int, fn func(i int) error) error {
	if workers < 1 {
		workers = 1
	}
	var next atomic.Int64
	var first error
	var once sync.Once
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				if err := fn(i); err != nil {
					once.Do(func() { first = err })
				}
			}
		}()
	}
	wg.Wait()
	return first
}

func ignoreExists(err error) error {
	if apierrors.IsAlreadyExists(err) {
		return nil
	}
	return err
}

// ---------------------------------------------------------------- seed

func seed(args []string) error {
	fs := flag.NewFlagSet("seed", flag.ExitOnError)
	kubeconfig := fs.String("kubeconfig", "", "kubeconfig (default $KUBECONFIG)")
	prefix := fs.String("prefix", "bench-", "namespace name prefix; names are PREFIX%05d")
	start := fs.Int("start", 0, "first namespace index")
	count := fs.Int("namespaces", 100, "namespaces to create")
	sas := fs.Int("service-accounts", 3, "ServiceAccounts per namespace, counting the \"default\" one kube-controller-manager adds")
	secrets := fs.Int("secrets", 0, "unrelated Opaque Secrets, spread round-robin over the namespaces")
	secretBytes := fs.Int("secret-bytes", 256, "payload of each unrelated Secret")
	concurrency := fs.Int("concurrency", 32, "requests in flight")
	waitTimeout := fs.Duration("wait-timeout", 10*time.Minute, "how long to wait for every default ServiceAccount")
	userAgent := fs.String("user-agent", "benchtool-seed", "user agent")
	_ = fs.Parse(args)

	cs, err := client(*kubeconfig, *userAgent)
	if err != nil {
		return err
	}
	ctx := context.Background()
	began := time.Now()
	nss := names(*prefix, *start, *count)
	err = parallel(len(nss), *concurrency, func(i int) error {
		ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: nss[i], Labels: map[string]string{"benchtool": "seed"}}}
		_, err := cs.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{})
		return ignoreExists(err)
	})
	if err != nil {
		return fmt.Errorf("create namespaces: %w", err)
	}
	extra := *sas - 1
	if extra < 0 {
		extra = 0
	}
	err = parallel(len(nss)*extra, *concurrency, func(i int) error {
		ns, n := nss[i/extra], i%extra+1
		sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("app%d", n)}}
		_, err := cs.CoreV1().ServiceAccounts(ns).Create(ctx, sa, metav1.CreateOptions{})
		return ignoreExists(err)
	})
	if err != nil {
		return fmt.Errorf("create service accounts: %w", err)
	}
	payload := []byte(strings.Repeat("x", *secretBytes))
	if len(nss) > 0 {
		err = parallel(*secrets, *concurrency, func(i int) error {
			s := &corev1.Secret{
				ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("unrelated-%05d", i)},
				Type:       corev1.SecretTypeOpaque,
				Data:       map[string][]byte{"payload": payload},
			}
			_, err := cs.CoreV1().Secrets(nss[i%len(nss)]).Create(ctx, s, metav1.CreateOptions{})
			return ignoreExists(err)
		})
		if err != nil {
			return fmt.Errorf("create secrets: %w", err)
		}
	}
	created := time.Since(began)

	// A namespace is ready once kube-controller-manager has given it its "default" ServiceAccount.
	want := make(map[string]bool, len(nss))
	for _, ns := range nss {
		want[ns] = true
	}
	deadline := time.Now().Add(*waitTimeout)
	for {
		list, err := cs.CoreV1().ServiceAccounts("").List(ctx, metav1.ListOptions{FieldSelector: "metadata.name=default"})
		if err != nil {
			return fmt.Errorf("list default service accounts: %w", err)
		}
		missing := len(want)
		for _, sa := range list.Items {
			if want[sa.Namespace] {
				missing--
			}
		}
		if missing == 0 {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%d namespaces still lack their default ServiceAccount after %s", missing, *waitTimeout)
		}
		time.Sleep(500 * time.Millisecond)
	}
	return emit(map[string]any{
		"namespaces":       len(nss),
		"service_accounts": len(nss) * (extra + 1),
		"secrets":          *secrets,
		"create_seconds":   created.Seconds(),
		"seconds":          time.Since(began).Seconds(),
	})
}

// ---------------------------------------------------------------- floor

type saState struct {
	name string
	rv   string
	refs []corev1.LocalObjectReference
}

// dockerConfig is a .dockerconfigjson of the controller's shape: one entry per registry domain.
func dockerConfig(domains []string, username, password string) []byte {
	auths := map[string]any{}
	for _, d := range domains {
		auths[d] = map[string]string{
			"username": username,
			"password": password,
			"auth":     base64.StdEncoding.EncodeToString([]byte(username + ":" + password)),
		}
	}
	out, _ := json.Marshal(map[string]any{"auths": auths})
	return out
}

func readNamespaces(prefix string, start, count int, file string) ([]string, error) {
	if file == "" {
		return names(prefix, start, count), nil
	}
	raw, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	return strings.FieldsFunc(string(raw), func(r rune) bool { return r == ',' || r == '\n' || r == ' ' }), nil
}

func floor(args []string) error {
	fs := flag.NewFlagSet("floor", flag.ExitOnError)
	kubeconfig := fs.String("kubeconfig", "", "kubeconfig (default $KUBECONFIG)")
	prefix := fs.String("prefix", "floor-", "namespace name prefix (names PREFIX%05d), unless --namespace-file")
	start := fs.Int("start", 0, "first namespace index")
	count := fs.Int("count", 100, "namespaces")
	file := fs.String("namespace-file", "", "file with the namespace names (comma, space or newline separated)")
	workers := fs.Int("workers", 32, "namespaces written at once")
	secretName := fs.String("secret-name", "floor-pull", "the pull Secret to create and reference")
	domains := fs.String("domains", "demo-registry.cn-hangzhou.cr.aliyuncs.com,demo-registry-vpc.cn-hangzhou.cr.aliyuncs.com", "registry domains in the Secret")
	userAgent := fs.String("user-agent", "benchtool-floor", "user agent of the writes (the reads before them use USER-AGENT-read)")
	_ = fs.Parse(args)

	nss, err := readNamespaces(*prefix, *start, *count, *file)
	if err != nil {
		return err
	}
	want := make(map[string]bool, len(nss))
	for _, ns := range nss {
		want[ns] = true
	}
	ctx := context.Background()

	// What the controller knows from its watch cache before it writes: every ServiceAccount with
	// its resourceVersion. Read under another user agent, so the floor counts only writes.
	reader, err := client(*kubeconfig, *userAgent+"-read")
	if err != nil {
		return err
	}
	list, err := reader.CoreV1().ServiceAccounts("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return fmt.Errorf("list service accounts: %w", err)
	}
	byNs := map[string][]saState{}
	for _, sa := range list.Items {
		if want[sa.Namespace] {
			byNs[sa.Namespace] = append(byNs[sa.Namespace], saState{sa.Name, sa.ResourceVersion, sa.ImagePullSecrets})
		}
	}
	serviceAccounts := 0
	for _, v := range byNs {
		sort.Slice(v, func(i, j int) bool { return v[i].name < v[j].name })
		serviceAccounts += len(v)
	}

	cs, err := client(*kubeconfig, *userAgent)
	if err != nil {
		return err
	}
	password := "reg-" + strings.Repeat("p", 43) // the fake's passwords: "reg-" + 43 characters
	secret := func(ns string) *corev1.Secret {
		return &corev1.Secret{
			ObjectMeta: metav1.ObjectMeta{
				Name:        *secretName,
				Namespace:   ns,
				Labels:      map[string]string{"app.kubernetes.io/managed-by": "benchtool-floor"},
				Annotations: map[string]string{"benchtool/expires-at": time.Now().Add(time.Hour).UTC().Format(time.RFC3339)},
			},
			Type: corev1.SecretTypeDockerConfigJson,
			Data: map[string][]byte{corev1.DockerConfigJsonKey: dockerConfig(strings.Split(*domains, ","), "cr_temp_user", password)},
		}
	}

	var secretsCreated, saPatched, conflicts, failures atomic.Int64
	var errMu sync.Mutex
	var firstErr error
	fail := func(err error) {
		failures.Add(1)
		errMu.Lock()
		if firstErr == nil {
			firstErr = err
		}
		errMu.Unlock()
	}
	patchSA := func(ns string, st saState) {
		for attempt := 0; attempt < 5; attempt++ {
			for _, r := range st.refs {
				if r.Name == *secretName {
					return
				}
			}
			refs := append(append([]corev1.LocalObjectReference{}, st.refs...), corev1.LocalObjectReference{Name: *secretName})
			patch, _ := json.Marshal(map[string]any{
				"metadata":         map[string]any{"resourceVersion": st.rv},
				"imagePullSecrets": refs,
			})
			_, err := cs.CoreV1().ServiceAccounts(ns).Patch(ctx, st.name, types.MergePatchType, patch, metav1.PatchOptions{})
			if err == nil {
				saPatched.Add(1)
				return
			}
			if !apierrors.IsConflict(err) {
				fail(fmt.Errorf("patch serviceaccount %s/%s: %w", ns, st.name, err))
				return
			}
			conflicts.Add(1)
			fresh, err := cs.CoreV1().ServiceAccounts(ns).Get(ctx, st.name, metav1.GetOptions{})
			if err != nil {
				fail(fmt.Errorf("get serviceaccount %s/%s: %w", ns, st.name, err))
				return
			}
			st = saState{fresh.Name, fresh.ResourceVersion, fresh.ImagePullSecrets}
		}
		fail(fmt.Errorf("serviceaccount %s/%s kept conflicting", ns, st.name))
	}

	began := time.Now()
	_ = parallel(len(nss), *workers, func(i int) error {
		ns := nss[i]
		_, err := cs.CoreV1().Secrets(ns).Create(ctx, secret(ns), metav1.CreateOptions{})
		switch {
		case err == nil:
			secretsCreated.Add(1)
		case apierrors.IsAlreadyExists(err):
		default:
			fail(fmt.Errorf("create secret %s/%s: %w", ns, *secretName, err))
			return nil
		}
		for _, st := range byNs[ns] {
			patchSA(ns, st)
		}
		return nil
	})
	elapsed := time.Since(began)
	out := map[string]any{
		"seconds":          elapsed.Seconds(),
		"namespaces":       len(nss),
		"workers":          *workers,
		"secrets_created":  secretsCreated.Load(),
		"sa_patched":       saPatched.Load(),
		"service_accounts": serviceAccounts,
		"conflicts":        conflicts.Load(),
		"errors":           failures.Load(),
	}
	if firstErr != nil {
		out["first_error"] = firstErr.Error()
	}
	if err := emit(out); err != nil {
		return err
	}
	if firstErr != nil {
		return errors.New("some writes failed")
	}
	return nil
}

// ---------------------------------------------------------------- create-namespaces

func createNamespaces(args []string) error {
	fs := flag.NewFlagSet("create-namespaces", flag.ExitOnError)
	kubeconfig := fs.String("kubeconfig", "", "kubeconfig (default $KUBECONFIG)")
	prefix := fs.String("prefix", "late-", "namespace name prefix; names are PREFIX%05d")
	start := fs.Int("start", 0, "first namespace index")
	count := fs.Int("count", 200, "namespaces to create")
	rate := fs.Float64("rate", 50, "creations started per second")
	userAgent := fs.String("user-agent", "benchtool-namespaces", "user agent")
	_ = fs.Parse(args)
	if *rate <= 0 {
		return errors.New("--rate must be positive")
	}
	cs, err := client(*kubeconfig, *userAgent)
	if err != nil {
		return err
	}
	ctx := context.Background()
	nss := names(*prefix, *start, *count)
	var wg sync.WaitGroup
	var failures atomic.Int64
	var errMu sync.Mutex
	var firstErr error
	interval := time.Duration(float64(time.Second) / *rate)
	began := time.Now()
	for i, name := range nss {
		// Paced from the start, so a slow answer does not slow the rate down.
		if d := time.Until(began.Add(time.Duration(i) * interval)); d > 0 {
			time.Sleep(d)
		}
		wg.Add(1)
		go func(name string) {
			defer wg.Done()
			ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"benchtool": "late"}}}
			if _, err := cs.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
				failures.Add(1)
				errMu.Lock()
				if firstErr == nil {
					firstErr = err
				}
				errMu.Unlock()
			}
		}(name)
	}
	wg.Wait()
	out := map[string]any{
		"namespaces": len(nss),
		"rate":       *rate,
		"seconds":    time.Since(began).Seconds(),
		"errors":     failures.Load(),
	}
	if firstErr != nil {
		out["first_error"] = firstErr.Error()
	}
	if err := emit(out); err != nil {
		return err
	}
	if firstErr != nil {
		return errors.New("some creations failed")
	}
	return nil
}

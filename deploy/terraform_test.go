package deploy

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclparse"
	"github.com/hashicorp/hcl/v2/hclsyntax"
	"github.com/hashicorp/hcl/v2/hclwrite"
	"github.com/zclconf/go-cty/cty"
	"github.com/zclconf/go-cty/cty/convert"
	"github.com/zclconf/go-cty/cty/function"
	"github.com/zclconf/go-cty/cty/function/stdlib"
)

// tfModule is the parsed deploy/terraform directory, with var.* bound to the
// variables' defaults (unknown where there is none) and local.* to the locals
// computed from them, for evaluating attributes.
type tfModule struct {
	blocks []*hclsyntax.Block
	ctx    *hcl.EvalContext
}

func loadTerraform(t *testing.T) *tfModule {
	t.Helper()
	return loadTerraformWith(t, nil)
}

// loadTerraformWith is loadTerraform with some variables set, as a
// terraform.tfvars would.
func loadTerraformWith(t *testing.T, set map[string]cty.Value) *tfModule {
	t.Helper()
	files, err := filepath.Glob("terraform/*.tf")
	if err != nil || len(files) == 0 {
		t.Fatalf("no terraform files: %v", err)
	}
	p := hclparse.NewParser()
	m := &tfModule{}
	for _, name := range files {
		f, diags := p.ParseHCLFile(name)
		if diags.HasErrors() {
			t.Fatalf("parse %s: %s", name, diags.Error())
		}
		m.blocks = append(m.blocks, f.Body.(*hclsyntax.Body).Blocks...)
	}

	vars := map[string]cty.Value{}
	for _, b := range m.blocks {
		if b.Type != "variable" {
			continue
		}
		def, ok := b.Body.Attributes["default"]
		if !ok {
			vars[b.Labels[0]] = cty.DynamicVal
			continue
		}
		v, diags := def.Expr.Value(nil)
		if diags.HasErrors() {
			t.Fatalf("variable %s: default is not a literal: %s", b.Labels[0], diags.Error())
		}
		vars[b.Labels[0]] = v
	}
	for name, v := range set {
		if _, ok := vars[name]; !ok {
			t.Fatalf("no variable %s", name)
		}
		vars[name] = v
	}
	m.ctx = &hcl.EvalContext{
		Variables: map[string]cty.Value{"var": cty.ObjectVal(vars)},
		Functions: map[string]function.Function{"tomap": tomap, "length": stdlib.LengthFunc, "concat": stdlib.ConcatFunc},
	}
	m.evalLocals(t)
	return m
}

// tomap is Terraform's tomap: an object becomes a map of its attributes'
// unified type.
var tomap = function.New(&function.Spec{
	Params: []function.Parameter{{Name: "v", Type: cty.DynamicPseudoType}},
	Type: func(args []cty.Value) (cty.Type, error) {
		v, err := convert.Convert(cty.UnknownVal(args[0].Type()), cty.Map(cty.DynamicPseudoType))
		if err != nil {
			return cty.NilType, err
		}
		return v.Type(), nil
	},
	Impl: func(args []cty.Value, retType cty.Type) (cty.Value, error) {
		return convert.Convert(args[0], retType)
	},
})

// evalLocals binds local.* to the locals blocks' values, evaluating each once
// the locals it refers to are known.
func (m *tfModule) evalLocals(t *testing.T) {
	t.Helper()
	pending := map[string]hcl.Expression{}
	for _, b := range m.blocks {
		if b.Type == "locals" {
			for name, a := range b.Body.Attributes {
				pending[name] = a.Expr
			}
		}
	}
	locals := map[string]cty.Value{}
	for len(pending) > 0 {
		progress := false
		for name, expr := range pending {
			ready := true
			for _, tr := range expr.Variables() {
				if tr.RootName() == "local" {
					if _, ok := locals[tr[1].(hcl.TraverseAttr).Name]; !ok {
						ready = false
					}
				}
			}
			if !ready {
				continue
			}
			m.ctx.Variables["local"] = cty.ObjectVal(locals)
			v, diags := expr.Value(m.ctx)
			if diags.HasErrors() {
				t.Fatalf("local.%s: %s", name, diags.Error())
			}
			locals[name] = v
			delete(pending, name)
			progress = true
		}
		if !progress {
			t.Fatalf("locals refer to each other in a cycle or to unknown locals: %v", pending)
		}
	}
	m.ctx.Variables["local"] = cty.ObjectVal(locals)
}

// block returns the one top-level block of typ with labels, failing when absent.
func (m *tfModule) block(t *testing.T, typ string, labels ...string) *hclsyntax.Body {
	t.Helper()
	for _, b := range m.blocks {
		if b.Type == typ && slices.Equal(b.Labels, labels) {
			return b.Body
		}
	}
	t.Fatalf("no %s %q block", typ, labels)
	return nil
}

// nested returns the nested blocks of typ in body.
func nested(body *hclsyntax.Body, typ string) []*hclsyntax.Body {
	var out []*hclsyntax.Body
	for _, b := range body.Blocks {
		if b.Type == typ {
			out = append(out, b.Body)
		}
	}
	return out
}

func attr(t *testing.T, body *hclsyntax.Body, name string) *hclsyntax.Attribute {
	t.Helper()
	a, ok := body.Attributes[name]
	if !ok {
		t.Fatalf("attribute %s is missing", name)
	}
	return a
}

// value evaluates body.name with var.* bound to the defaults and returns it as
// a string (numbers in their shortest form).
func (m *tfModule) value(t *testing.T, body *hclsyntax.Body, name string) string {
	t.Helper()
	return valueIn(t, m.ctx, body, name)
}

// valueIn is value in the evaluation context ctx.
func valueIn(t *testing.T, ctx *hcl.EvalContext, body *hclsyntax.Body, name string) string {
	t.Helper()
	v, diags := attr(t, body, name).Expr.Value(ctx)
	if diags.HasErrors() {
		t.Fatalf("%s: %s", name, diags.Error())
	}
	if !v.IsWhollyKnown() {
		t.Fatalf("%s: not known without inputs", name)
	}
	switch v.Type() {
	case cty.String:
		return v.AsString()
	case cty.Number:
		return v.AsBigFloat().Text('f', -1)
	case cty.Bool:
		if v.True() {
			return "true"
		}
		return "false"
	}
	t.Fatalf("%s: unexpected type %s", name, v.Type().FriendlyName())
	return ""
}

// references returns the "a.b" prefixes of every traversal in body.name.
func references(t *testing.T, body *hclsyntax.Body, name string) []string {
	t.Helper()
	var out []string
	for _, tr := range attr(t, body, name).Expr.Variables() {
		s := tr.RootName()
		if len(tr) > 1 {
			if a, ok := tr[1].(hcl.TraverseAttr); ok {
				s += "." + a.Name
			}
		}
		out = append(out, s)
	}
	return out
}

// proxyModes are the two ways the stack runs: with the agent's proxy (the
// default) and without (proxy_port = 0).
var proxyModes = []struct {
	name string
	set  map[string]cty.Value
}{
	{"proxy", nil},
	{"no proxy", map[string]cty.Value{"proxy_port": cty.NumberIntVal(0)}},
}

func TestTerraformTargetGroupChecksAgentHealth(t *testing.T) {
	for _, mode := range proxyModes {
		t.Run(mode.name, func(t *testing.T) {
			m := loadTerraformWith(t, mode.set)
			tg := m.block(t, "resource", "aws_lb_target_group", "app")
			hcs := nested(tg, "health_check")
			if len(hcs) != 1 {
				t.Fatalf("want one health_check block, got %d", len(hcs))
			}
			// With the proxy, the check goes where the traffic goes: the agent
			// answers /health.html on its traffic port.
			port, tgPort := "traffic-port", "80"
			if mode.set != nil {
				port, tgPort = "8081", "3000"
			}
			want := map[string]string{
				"port":                port,
				"path":                "/health.html",
				"matcher":             "200",
				"interval":            "10",
				"timeout":             "5",
				"healthy_threshold":   "2",
				"unhealthy_threshold": "2",
				"protocol":            "HTTP",
			}
			for name, w := range want {
				if got := m.value(t, hcs[0], name); got != w {
					t.Errorf("health_check.%s = %s, want %s", name, got, w)
				}
			}
			// The traffic goes to the proxy, or without it to the app.
			if got := m.value(t, tg, "port"); got != tgPort {
				t.Errorf("target group port = %s, want %s", got, tgPort)
			}
		})
	}
}

func TestTerraformAutoscalingGroup(t *testing.T) {
	m := loadTerraform(t)
	asg := m.block(t, "resource", "aws_autoscaling_group", "app")
	if got := m.value(t, asg, "health_check_type"); got != "ELB" {
		t.Errorf("health_check_type = %s, want ELB", got)
	}
	// Packages, git clone, npm ci and a build take minutes on a small instance.
	if got := m.value(t, asg, "health_check_grace_period"); got != "300" {
		t.Errorf("health_check_grace_period = %s, want 300", got)
	}
	if refs := references(t, asg, "target_group_arns"); !slices.Contains(refs, "aws_lb_target_group.app") {
		t.Errorf("target_group_arns = %q, want the app target group", refs)
	}
	lts := nested(asg, "launch_template")
	if len(lts) != 1 || !slices.Contains(references(t, lts[0], "id"), "aws_launch_template.app") {
		t.Errorf("the group does not launch from aws_launch_template.app")
	}
}

// TestTerraformInstanceRefresh: a new launch template version (a new AMI or
// user_data) rolls through the group by instance refresh, keeping most of it
// in service, without checkpoints unless asked for; the target group lets a
// leaving instance drain for longer than the agent's stop.drain.
func TestTerraformInstanceRefresh(t *testing.T) {
	m := loadTerraform(t)
	asg := m.block(t, "resource", "aws_autoscaling_group", "app")
	lts := nested(asg, "launch_template")
	if len(lts) != 1 || !slices.Equal(references(t, lts[0], "version"), []string{"aws_launch_template.app"}) ||
		!strings.Contains(string(attr(t, lts[0], "version").SrcRange.SliceBytes(mustReadBytes(t, "terraform/main.tf"))), "latest_version") {
		t.Errorf("the group does not follow the launch template's latest_version: a new version would start no refresh")
	}
	irs := nested(asg, "instance_refresh")
	if len(irs) != 1 {
		t.Fatalf("want one instance_refresh block, got %d", len(irs))
	}
	if got := m.value(t, irs[0], "strategy"); got != "Rolling" {
		t.Errorf("instance_refresh.strategy = %s, want Rolling", got)
	}
	prefs := nested(irs[0], "preferences")
	if len(prefs) != 1 {
		t.Fatalf("want one preferences block, got %d", len(prefs))
	}
	for name, want := range map[string]string{"min_healthy_percentage": "90", "instance_warmup": "300", "skip_matching": "true"} {
		if got := m.value(t, prefs[0], name); got != want {
			t.Errorf("instance_refresh.preferences.%s = %s, want %s", name, got, want)
		}
	}
	checkpoints := func(m *tfModule) cty.Value {
		v, diags := attr(t, prefs[0], "checkpoint_percentages").Expr.Value(m.ctx)
		if diags.HasErrors() {
			t.Fatalf("checkpoint_percentages: %s", diags.Error())
		}
		return v
	}
	if v := checkpoints(m); !v.IsNull() {
		t.Errorf("checkpoint_percentages = %#v by default, want null (no checkpoints)", v)
	}
	with := loadTerraformWith(t, map[string]cty.Value{"refresh_checkpoints": cty.ListVal([]cty.Value{cty.NumberIntVal(50)})})
	prefs = nested(nested(with.block(t, "resource", "aws_autoscaling_group", "app"), "instance_refresh")[0], "preferences")
	v := checkpoints(with)
	if v.IsNull() || v.LengthInt() != 2 || v.Index(cty.NumberIntVal(1)).AsBigFloat().Text('f', -1) != "100" {
		t.Errorf("checkpoint_percentages = %#v with refresh_checkpoints = [50], want [50, 100]", v)
	}
	if got := with.value(t, prefs[0], "checkpoint_delay"); got != "600" {
		t.Errorf("checkpoint_delay = %s with checkpoints, want 600", got)
	}

	// deregistration_delay covers stop.drain plus the app's stop.timeout.
	for _, drain := range []int64{20, 45} {
		m := loadTerraformWith(t, map[string]cty.Value{"stop_drain_seconds": cty.NumberIntVal(drain)})
		tg := m.block(t, "resource", "aws_lb_target_group", "app")
		got := m.value(t, tg, "deregistration_delay")
		if want := strconv.FormatInt(drain+10, 10); got != want {
			t.Errorf("stop_drain_seconds = %d: deregistration_delay = %s, want %s", drain, got, want)
		}
		obj := userDataCall(t, m).Args[1].(*hclsyntax.ObjectConsExpr)
		found := false
		for _, item := range obj.Items {
			if k, _ := item.KeyExpr.Value(nil); k.AsString() == "STOP_DRAIN" {
				v, diags := item.ValueExpr.Value(m.ctx)
				if diags.HasErrors() {
					t.Fatalf("STOP_DRAIN: %s", diags.Error())
				}
				if want := fmt.Sprintf("%ds", drain); v.AsString() != want {
					t.Errorf("STOP_DRAIN = %q, want %q", v.AsString(), want)
				}
				found = true
			}
		}
		if !found {
			t.Errorf("user_data gets no STOP_DRAIN")
		}
	}
}

func mustReadBytes(t *testing.T, path string) []byte {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// ingress returns the ingress rules of an aws_security_group body, static
// blocks and those a dynamic "ingress" block makes, each with the context to
// evaluate it in.
func (m *tfModule) ingress(t *testing.T, sg *hclsyntax.Body) ([]*hclsyntax.Body, []*hcl.EvalContext) {
	t.Helper()
	var bodies []*hclsyntax.Body
	var ctxs []*hcl.EvalContext
	for _, b := range sg.Blocks {
		switch {
		case b.Type == "ingress":
			bodies, ctxs = append(bodies, b.Body), append(ctxs, m.ctx)
		case b.Type == "dynamic" && slices.Equal(b.Labels, []string{"ingress"}):
			each, diags := attr(t, b.Body, "for_each").Expr.Value(m.ctx)
			if diags.HasErrors() {
				t.Fatalf("dynamic ingress for_each: %s", diags.Error())
			}
			contents := nested(b.Body, "content")
			if len(contents) != 1 {
				t.Fatalf("dynamic ingress: want one content block, got %d", len(contents))
			}
			for it := each.ElementIterator(); it.Next(); {
				k, v := it.Element()
				ctx := m.ctx.NewChild()
				ctx.Variables = map[string]cty.Value{"ingress": cty.ObjectVal(map[string]cty.Value{"key": k, "value": v})}
				bodies, ctxs = append(bodies, contents[0]), append(ctxs, ctx)
			}
		}
	}
	return bodies, ctxs
}

func TestTerraformSecurityGroupLetsALBReachAgent(t *testing.T) {
	for _, mode := range proxyModes {
		t.Run(mode.name, func(t *testing.T) {
			m := loadTerraformWith(t, mode.set)
			sg := m.block(t, "resource", "aws_security_group", "app")
			var open []string
			bodies, ctxs := m.ingress(t, sg)
			for i, in := range bodies {
				from, to := valueIn(t, ctxs[i], in, "from_port"), valueIn(t, ctxs[i], in, "to_port")
				if from != to {
					t.Errorf("ingress %s-%s: want single ports", from, to)
				}
				if !slices.Contains(references(t, in, "security_groups"), "aws_security_group.alb") {
					t.Errorf("ingress on %s is not from the load balancer's group", from)
				}
				if c := valueIn(t, ctxs[i], in, "description"); c == "" {
					t.Errorf("ingress on %s has no description", from)
				}
				open = append(open, from)
			}
			slices.Sort(open)
			// With the proxy, only its port: the app and the health page are
			// on loopback.
			want := []string{"80"}
			if mode.set != nil {
				want = []string{"3000", "8081"}
			}
			if !slices.Equal(open, want) {
				t.Errorf("ports open to the load balancer: %v, want %v", open, want)
			}
			// The load balancer's own group is attached to it.
			if refs := references(t, m.block(t, "resource", "aws_lb", "app"), "security_groups"); !slices.Contains(refs, "aws_security_group.alb") {
				t.Errorf("aws_lb.app security_groups = %q", refs)
			}
		})
	}
}

// userDataCall returns the templatefile(...) call in the launch template's
// user_data (inside base64encode).
func userDataCall(t *testing.T, m *tfModule) *hclsyntax.FunctionCallExpr {
	t.Helper()
	lt := m.block(t, "resource", "aws_launch_template", "app")
	outer, ok := attr(t, lt, "user_data").Expr.(*hclsyntax.FunctionCallExpr)
	if !ok || outer.Name != "base64encode" || len(outer.Args) != 1 {
		t.Fatalf("user_data is not base64encode(...)")
	}
	call, ok := outer.Args[0].(*hclsyntax.FunctionCallExpr)
	if !ok || call.Name != "templatefile" || len(call.Args) != 2 {
		t.Fatalf("user_data is not base64encode(templatefile(path, vars))")
	}
	return call
}

func TestTerraformUserDataIsTheBootstrapScript(t *testing.T) {
	m := loadTerraform(t)
	call := userDataCall(t, m)

	// The path: "${path.module}/../user_data.sh".
	tmpl, ok := call.Args[0].(*hclsyntax.TemplateExpr)
	if !ok {
		t.Fatalf("templatefile path is not a string template")
	}
	var lit strings.Builder
	for _, part := range tmpl.Parts {
		if l, ok := part.(*hclsyntax.LiteralValueExpr); ok && l.Val.Type() == cty.String {
			lit.WriteString(l.Val.AsString())
		}
	}
	rel := strings.TrimPrefix(lit.String(), "/")
	if filepath.Base(rel) != "user_data.sh" {
		t.Fatalf("templatefile renders %q, want user_data.sh", lit.String())
	}
	if got := filepath.Clean(filepath.Join("terraform", rel)); got != "user_data.sh" {
		t.Errorf("templatefile path resolves to deploy/%s, want deploy/user_data.sh", got)
	}

	// Every placeholder of the script gets a value, and nothing else is passed.
	obj, ok := call.Args[1].(*hclsyntax.ObjectConsExpr)
	if !ok {
		t.Fatalf("templatefile vars are not an object")
	}
	var keys []string
	for _, item := range obj.Items {
		k, diags := item.KeyExpr.Value(nil)
		if diags.HasErrors() {
			t.Fatalf("templatefile key: %s", diags.Error())
		}
		keys = append(keys, k.AsString())
	}
	sort.Strings(keys)
	if want := templateVars(t); !slices.Equal(keys, want) {
		t.Errorf("templatefile passes %q\nuser_data.sh uses    %q", keys, want)
	}

	// The script and the target group agree on the health port: both come from
	// var.health_port.
	for _, item := range obj.Items {
		k, _ := item.KeyExpr.Value(nil)
		wantRef := map[string]string{"HEALTH_PORT": "var.health_port", "APP_PORT": "var.app_port", "PROXY_PORT": "local.proxy var.proxy_port"}[k.AsString()]
		if wantRef == "" {
			continue
		}
		var refs []string
		for _, tr := range item.ValueExpr.Variables() {
			refs = append(refs, tr.RootName()+"."+tr[1].(hcl.TraverseAttr).Name)
		}
		if !slices.Equal(refs, strings.Fields(wantRef)) {
			t.Errorf("%s = %q, want %s", k.AsString(), refs, wantRef)
		}
	}
	tg := m.block(t, "resource", "aws_lb_target_group", "app")
	if refs := references(t, nested(tg, "health_check")[0], "port"); !slices.Equal(refs, []string{"local.proxy", "var.health_port"}) {
		t.Errorf("health_check.port = %q, want local.proxy and var.health_port", refs)
	}
}

// TestTerraformProxyPortInUserData: the script gets the proxy port in proxy
// mode and an empty PROXY_PORT (no proxy) with proxy_port = 0.
func TestTerraformProxyPortInUserData(t *testing.T) {
	for _, mode := range proxyModes {
		t.Run(mode.name, func(t *testing.T) {
			m := loadTerraformWith(t, mode.set)
			obj := userDataCall(t, m).Args[1].(*hclsyntax.ObjectConsExpr)
			got := "(missing)"
			for _, item := range obj.Items {
				if k, _ := item.KeyExpr.Value(nil); k.AsString() == "PROXY_PORT" {
					v, diags := item.ValueExpr.Value(m.ctx)
					if diags.HasErrors() {
						t.Fatalf("PROXY_PORT: %s", diags.Error())
					}
					sv, err := convert.Convert(v, cty.String)
					if err != nil {
						t.Fatalf("PROXY_PORT: %v", err)
					}
					got = sv.AsString()
				}
			}
			want := "80"
			if mode.set != nil {
				want = ""
			}
			if got != want {
				t.Errorf("PROXY_PORT = %q, want %q", got, want)
			}
		})
	}
}

// TestTerraformFormatted: the files are as terraform fmt leaves them (the
// same formatter, hclwrite).
func TestTerraformFormatted(t *testing.T) {
	files, _ := filepath.Glob("terraform/*.tf")
	for _, name := range files {
		src, err := os.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		if got := hclwrite.Format(src); string(got) != string(src) {
			t.Errorf("%s is not formatted (terraform fmt); formatted:\n%s", name, got)
		}
	}
}

"""No module-level import cycle inside any crate (the crates' own arrows are cargo's to enforce).

    python3 tests/module_cycles.py crates/*      # exit 1 and name the cycle if there is one

Reads each crate's src/: a module's `crate::` and `super::` paths (test
modules and comments left out), with names the crate root re-exports
resolved to the module that defines them.
"""
import re,sys,glob,os

def cycles(root):
    src=os.path.join(root,'src')
    mods={}
    for p in glob.glob(src+'/**/*.rs',recursive=True):
        rel=os.path.relpath(p,src)[:-3]
        if rel in ('lib','main'): name='crate'
        else: name=rel.replace('/mod','').replace('/','::')
        mods[name]=open(p).read()
    lib=mods.get('crate','')
    # map re-exported item -> module
    reexp={}
    for m in re.finditer(r'pub use (\w+)::\{([^}]*)\};|pub use (\w+)::(\w+);',lib,re.S):
        if m.group(1):
            for item in re.split(r'[,\s]+',m.group(2)):
                item=item.strip()
                if item and item!='self': reexp[item.split(' as ')[-1]]=m.group(1)
        else: reexp[m.group(4)]=m.group(3)
    top=set(n.split('::')[0] for n in mods if n!='crate')
    edges={}
    for name,text in mods.items():
        if name=='crate': continue
        # strip test modules
        t=re.split(r'#\[cfg\(test\)\]\s*mod \w+\s*\{',text)[0]
        # remove comments
        t=re.sub(r'//[^\n]*','',t)
        deps=set()
        me=name.split('::')[0]
        for m in re.finditer(r'(?:crate|super)::(\{[^}]*\}|\w+)',t,re.S):
            g=m.group(1)
            items=re.findall(r'\w+',g) if g.startswith('{') else [g]
            for it in items:
                if it in top: d=it
                elif it in reexp: d=reexp[it]
                else: continue
                if d!=me: deps.add(d)
        edges.setdefault(me,set()).update(deps)
    # find cycles (SCCs)
    idx={};low={};st=[];on=set();res=[];c=[0]
    def sc(v):
        idx[v]=low[v]=c[0];c[0]+=1;st.append(v);on.add(v)
        for w in edges.get(v,()):
            if w not in idx: sc(w);low[v]=min(low[v],low[w])
            elif w in on: low[v]=min(low[v],idx[w])
        if low[v]==idx[v]:
            comp=[]
            while True:
                w=st.pop();on.discard(w);comp.append(w)
                if w==v:break
            if len(comp)>1: res.append(comp)
    for v in list(edges): 
        if v not in idx: sc(v)
    return res

if __name__ == "__main__":
    found = False
    for root in sys.argv[1:]:
        for cycle in cycles(root):
            found = True
            print(f"{root}: modules import each other in a cycle: {' -> '.join(sorted(cycle))}")
    sys.exit(1 if found else 0)

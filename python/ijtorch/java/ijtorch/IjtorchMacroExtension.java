package ijtorch;

import ij.IJ;
import ij.macro.ExtensionDescriptor;
import ij.macro.Functions;
import ij.macro.MacroExtension;
import ij.plugin.PlugIn;

import java.util.Map;

/**
 * "ijtorch Macro Functions": makes the Python-registered functions callable from macros as
 * Ext.ijtorch...(...). Results come back as strings; a function registered with a trailing
 * numeric output argument sets that macro variable to a number. In an ImageJ without Python the
 * functions are the configured ijtorch server's (IjtorchRemote), which runs them.
 */
public class IjtorchMacroExtension implements PlugIn, MacroExtension {

    @Override
    public void run(String arg) {
        if (!IJ.macroRunning()) {
            IJ.error("ijtorch", "\"ijtorch Macro Functions\" must be called from a macro:\n"
                    + "run(\"ijtorch Macro Functions\"); then Ext.ijtorch...()");
            return;
        }
        if (IjtorchRegistry.functionHandler() == null && IjtorchServer.configured()) {
            try {  // an ImageJ without Python: the server's commands and functions, runnable by name
                IjtorchRemote.install();
            } catch (Exception e) {
                IjtorchRegistry.reportError("ijtorch Macro Functions", IjtorchServer.describe(e));
                return;
            }
        }
        Functions.registerExtensions(this);
    }

    @Override
    public ExtensionDescriptor[] getExtensionFunctions() {
        Map<String, int[]> functions = IjtorchRegistry.functions();
        ExtensionDescriptor[] out = new ExtensionDescriptor[functions.size()];
        int i = 0;
        for (Map.Entry<String, int[]> e : functions.entrySet()) {
            out[i++] = new ExtensionDescriptor(e.getKey(), e.getValue(), this);
        }
        return out;
    }

    @Override
    public String handleExtension(String name, Object[] args) {
        IjtorchRegistry.FunctionHandler handler = IjtorchRegistry.functionHandler();
        if (handler == null && IjtorchServer.configured()) {
            try {  // no Python here: the server runs it (or says that it needs in-process Python)
                return IjtorchRemote.callFunction(name, args);
            } catch (Exception e) {
                IjtorchRegistry.reportError("Ext." + name, IjtorchServer.describe(e));
                return null;
            }
        }
        if (handler == null) {
            IjtorchRegistry.reportError("Ext." + name, "no Python function handler is registered");
            return null;
        }
        String result;
        try {
            result = handler.call(name, args);
        } catch (Throwable t) {
            IjtorchRegistry.reportError("Ext." + name, t.getClass().getSimpleName() + ": " + t.getMessage());
            return null;
        }
        if (result != null && result.startsWith(ERROR_PREFIX)) {
            IjtorchRegistry.reportError("Ext." + name, result.substring(ERROR_PREFIX.length()));
            return null;
        }
        return result;
    }

    /** Python marks a failure with this prefix (a proxy cannot throw checked Java exceptions). */
    public static final String ERROR_PREFIX = "\u001bijtorch-error:";
}

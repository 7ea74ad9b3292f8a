package ijtorch;

import ij.IJ;
import ij.Menus;
import ij.macro.Interpreter;

import java.awt.Menu;
import java.awt.MenuItem;
import java.util.*;

/**
 * The one place where ImageJ meets Python: command and macro-function handlers registered by
 * Python (through JPype proxies) are looked up here by the ImageJ-facing classes.
 *
 * <p>Logic stays in Python; this class only stores handlers, installs menu entries and reports
 * errors the way ImageJ users expect (a macro error that names the problem).
 */
public final class IjtorchRegistry {

    /** Runs one command; returns null on success or an error message. */
    public interface CommandHandler {
        String run(String command, String options);
    }

    /** Runs one macro extension function; returns the macro-visible result. */
    public interface FunctionHandler {
        String call(String name, Object[] args);
    }

    /** Dialog field description, one per line: kind \t key \t default \t choices(|) \t help. */
    private static final Map<String, String> DIALOG_SPECS = new LinkedHashMap<>();
    private static final Map<String, CommandHandler> COMMANDS = new LinkedHashMap<>();
    private static final Set<String> NEEDS_IMAGE = new HashSet<>();
    private static final Map<String, int[]> FUNCTIONS = new LinkedHashMap<>();
    private static FunctionHandler functionHandler;
    /** The error that last aborted a macro, and its line: the interpreter, told to ignore errors,
     *  keeps parsing after an abort and replaces the message with a syntax error of its own
     *  ("';' expected" inside a loop or block), so callers read the real one here. */
    private static volatile String macroError;
    private static volatile int macroErrorLine;

    public static final String MENU_PATH = "Plugins>ijtorch";

    private IjtorchRegistry() {}

    /** {@code needsImage}: refused without an open image, before any dialog. */
    public static synchronized void registerCommand(String command, String dialogSpec, boolean needsImage,
                                                    CommandHandler handler) {
        COMMANDS.put(command, handler);
        DIALOG_SPECS.put(command, dialogSpec == null ? "" : dialogSpec);
        NEEDS_IMAGE.remove(command);
        if (needsImage) {
            NEEDS_IMAGE.add(command);
        }
        installMenuCommand(command, "ijtorch.IjtorchCommand(\"" + command + "\")");
    }

    public static synchronized void unregisterCommand(String command) {
        COMMANDS.remove(command);
        DIALOG_SPECS.remove(command);
        NEEDS_IMAGE.remove(command);
    }

    public static synchronized void registerFunction(String name, int[] argTypes) {
        FUNCTIONS.put(name, argTypes);
    }

    public static synchronized void setFunctionHandler(FunctionHandler handler) {
        functionHandler = handler;
    }

    public static synchronized CommandHandler command(String command) {
        return COMMANDS.get(command);
    }

    public static synchronized boolean needsImage(String command) {
        return NEEDS_IMAGE.contains(command);
    }

    public static synchronized String dialogSpec(String command) {
        String spec = DIALOG_SPECS.get(command);
        return spec == null ? "" : spec;
    }

    public static synchronized Map<String, int[]> functions() {
        return new LinkedHashMap<>(FUNCTIONS);
    }

    static synchronized FunctionHandler functionHandler() {
        return functionHandler;
    }

    /** The message of the last error that aborted a macro since {@link #clearMacroError}, or null. */
    public static String macroError() {
        return macroError;
    }

    /** The macro line {@link #macroError} happened on (0 when unknown). */
    public static int macroErrorLine() {
        return macroErrorLine;
    }

    public static void clearMacroError() {
        macroError = null;
        macroErrorLine = 0;
    }

    /** Puts a command into ImageJ's command table and, when a menu bar exists, under Plugins>ijtorch. */
    public static void installMenuCommand(String command, String className) {
        Hashtable<String, String> table = Menus.getCommands();
        if (table == null) {
            return;  // ImageJ not initialised: nothing to install into
        }
        boolean isNew = !table.containsKey(command);
        table.put(command, className);
        boolean menus = isNew && Menus.getMenuBar() != null && IJ.getInstance() != null;
        Menu plugins = menus ? Menus.getImageJMenu("Plugins") : null;
        if (plugins == null) {
            return;  // no menu bar (headless, batch): the command table is enough
        }
        Menu sub = null;
        for (int i = 0; i < plugins.getItemCount(); i++) {
            MenuItem item = plugins.getItem(i);
            if (item instanceof Menu && "ijtorch".equals(item.getLabel())) {
                sub = (Menu) item;
            }
        }
        if (sub == null) {
            sub = new Menu("ijtorch");
            plugins.add(sub);
        }
        MenuItem item = new MenuItem(menuLabel(command));
        item.setActionCommand(command);  // ImageJ runs the item's action command: the command name
        item.addActionListener(IJ.getInstance());
        int at = sub.getItemCount();  // sorted by task, then by name
        for (int i = 0; i < sub.getItemCount(); i++) {
            String other = sub.getItem(i).getActionCommand();
            if (taskRank(command) < taskRank(other)
                    || (taskRank(command) == taskRank(other) && command.compareTo(other) < 0)) {
                at = i;
                break;
            }
        }
        sub.insert(item, at);
    }

    /** The menu label under Plugins>ijtorch: the command without the repeated "ijtorch " prefix, with
     *  an ellipsis where a dialog follows ("ijtorch Segment" becomes "Segment..."). */
    public static String menuLabel(String command) {
        String label = command.startsWith("ijtorch ") ? command.substring("ijtorch ".length()) : command;
        return "Macro Functions".equals(label) ? label : label + "\u2026";
    }

    /** The order of tasks in the menu: segmentation, tracking, classification, restoration,
     *  training, evaluation, utilities. */
    static int taskRank(String command) {
        String[] order = {"Segment", "Track", "Classif", "Restore", "Denoise", "Artificial", "Train", "Evaluat",
                          "Embed", "Percentile", "Macro Functions"};
        String label = command == null ? "" : command.replaceFirst("^ijtorch ", "");
        for (int i = 0; i < order.length; i++) {
            if (label.startsWith(order[i])) {
                return i;
            }
        }
        return order.length;
    }

    /**
     * Reports a failure: inside a running macro it aborts the macro with the message (so a
     * macro sees an error carrying the Python text); otherwise it logs and shows an error.
     */
    static void reportError(String where, String message) {
        String text = where + ": " + message;
        Interpreter interp = Interpreter.getInstance();
        if (interp != null) {
            macroErrorLine = interp.getLineNumber();
            macroError = text;
            interp.abort(text);
        } else {
            IJ.log(text);
            if (!java.awt.GraphicsEnvironment.isHeadless() && !"true".equals(System.getProperty("ijtorch.batch"))
                    && !IJ.isMacro()) {
                IJ.error("ijtorch", text);
            }
        }
    }
}
